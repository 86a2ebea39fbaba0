"""The run directory: config.json, model.safetensors, optimizer.pt, metrics.jsonl, figures.

Every file is written atomically (temporary file + rename). Weights load only through
safetensors and optimizer state only through ``torch.load(weights_only=True)``, so nothing in a
run directory can execute code.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from .config import Config
from .errors import RunError

CONFIG, WEIGHTS, OPTIMIZER, METRICS = "config.json", "model.safetensors", "optimizer.pt", "metrics.jsonl"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary path beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def default_path(cfg: Config) -> Path:
    name = cfg.data.dataset.replace("npz:", "").replace("/", "_").replace(".npz", "")
    return Path("runs") / f"{cfg.model.model}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def create(path: Path, overwrite: bool) -> Path:
    """A fresh run directory; an existing non-empty one is refused unless ``overwrite``."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise RunError(f"{path} already exists; pass --overwrite to replace it, --resume to continue it, or choose another --out")
        if not is_run(path):
            raise RunError(f"{path} exists and is not a run directory; refusing to overwrite it, choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file()


def write_config(path: Path, cfg: Config, x_shape, source: str, n_classes) -> None:
    meta = {"x_shape": list(x_shape), "data_source": source, "n_classes": n_classes,
            "versions": {"aevb": __version__, "torch": torch.__version__, "python": platform.python_version()}}
    write_text(path / CONFIG, json.dumps({**cfg.to_dict(), "run": meta}, indent=2) + "\n")


def read_config(path: Path) -> tuple[Config, dict]:
    """The run's Config and its 'run' metadata (x_shape, data source, versions)."""
    path = Path(path)
    if not is_run(path):
        raise RunError(f"{path} is not a run directory (no {CONFIG}); pass the folder that 'aevb train' printed")
    try:
        d = json.loads((path / CONFIG).read_text())
        meta = d.pop("run")
        return Config.from_dict(d, str(path / CONFIG)), meta
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise RunError(f"{path / CONFIG} is corrupt ({e}); the run cannot be loaded") from None


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Weights (safetensors) and optimizer state + RNG state (torch.save of tensors only), both
    stamped with the epoch so that a resume can check they belong together."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    trainer = {"optimizer": optimizer.state_dict(), "epoch": epoch, "rng_state": torch.get_rng_state()}
    if torch.cuda.is_available():
        trainer["cuda_rng_state"] = torch.cuda.get_rng_state_all()
    atomic_write(path / OPTIMIZER, lambda p: torch.save(trainer, p))
    atomic_write(path / WEIGHTS, lambda p: save_file(state, str(p), metadata={"epoch": str(epoch)}))


def load_weights(path: Path, model: torch.nn.Module) -> int:
    """Load model.safetensors into model (strictly); returns the epoch it was saved at."""
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise RunError(f"{path} has no {WEIGHTS}; the run has not finished an epoch yet")
    try:
        state = load_file(str(file))
        with safe_open(str(file), "pt") as f:
            epoch = int((f.metadata() or {}).get("epoch", 0))
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{file} is corrupt or truncated ({e}); delete the run or restore the file") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise RunError(f"{file} does not fit the model in {path / CONFIG} ({first}); the files come from different runs") from None
    return epoch


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore weights, optimizer and RNG state; returns the epoch to continue after."""
    epoch = load_weights(path, model)
    file = Path(path) / OPTIMIZER
    try:
        trainer = torch.load(file, weights_only=True, map_location="cpu")
        optimizer.load_state_dict(trainer["optimizer"])
    except FileNotFoundError:
        raise RunError(f"{path} has no {OPTIMIZER}; it cannot be resumed") from None
    except Exception as e:  # unpickling refusals, truncation and mismatched state all mean the same here
        raise RunError(f"{file} is corrupt, unsafe or from another model ({type(e).__name__}); it cannot be resumed") from None
    if trainer.get("epoch") != epoch:
        raise RunError(f"{WEIGHTS} (epoch {epoch}) and {OPTIMIZER} (epoch {trainer.get('epoch')}) in {path} disagree; "
                       "the run was interrupted while saving and cannot be resumed")
    torch.set_rng_state(trainer["rng_state"])
    if "cuda_rng_state" in trainer and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["cuda_rng_state"])
    return epoch


def json_safe(record: dict) -> dict:
    """NaN and Inf become null, so metrics.jsonl stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def append_metrics(path: Path, record: dict) -> None:
    with open(path / METRICS, "a") as f:
        f.write(json.dumps(json_safe(record)) + "\n")


def read_metrics(path: Path) -> list[dict]:
    file = Path(path) / METRICS
    if not file.exists():
        return []
    try:
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise RunError(f"{file} is corrupt ({e})") from None


def truncate_metrics(path: Path, epoch: int) -> None:
    """Keep the metrics of epochs up to ``epoch`` (those a resume continues from)."""
    kept = [r for r in read_metrics(path) if r["epoch"] <= epoch]
    write_text(path / METRICS, "".join(json.dumps(r) + "\n" for r in kept))
