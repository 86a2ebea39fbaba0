"""The Python API beside the CLI: load a trained run."""
from __future__ import annotations

from pathlib import Path

from . import rundir
from .models import build_model


def load(run: str | Path, device: str = "cpu", checkpoint: str = "last"):
    """The trained model of a run directory, in eval mode: ``encode(x)`` gives q(z|x),
    ``decode(z)`` p(x|z), plus ``sample``, ``reconstruct``, ``embed`` and ``elbo``. ``checkpoint``:
    "last" (model.safetensors) or "best" (best.safetensors, the best validation ELBO of a run
    trained with a validation set)."""
    cfg, meta = rundir.read_config(Path(run))
    model = build_model(cfg.model, tuple(meta["x_shape"]), meta.get("n_classes"))
    rundir.load_weights(Path(run), model, checkpoint)
    return model.to(device).eval()
