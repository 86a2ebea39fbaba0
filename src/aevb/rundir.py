"""The run directory: config.json, model.safetensors, optimizer.pt, metrics.jsonl, figures, and
best.safetensors (the weights of the epoch with the best validation ELBO) where a validation set is held out.

Every file is written atomically (temporary file, flushed to disk, then renamed). Weights load only
through safetensors and optimizer state only through ``torch.load(weights_only=True)``, so nothing
in a run directory can execute code.

A checkpoint is two files, so replacing it takes three renames; ``save_checkpoint`` orders them so
that a process killed at any instant leaves a loadable checkpoint (the new one or the previous one),
and ``load_checkpoint`` finds it: see ``save_checkpoint``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from .config import Config
from .errors import ConfigError, RunError

CONFIG, WEIGHTS, OPTIMIZER, METRICS = "config.json", "model.safetensors", "optimizer.pt", "metrics.jsonl"
METRICS_CSV = "metrics.csv"  # aevb.logging's csv logger: metrics.jsonl as a table
PREVIOUS = "optimizer.prev.pt"  # the previous optimizer state, present only while (or if killed while) saving
BEST = "best.safetensors"  # the weights of the epoch with the best validation ELBO (runs with --val-fraction)
CHECKPOINTS = {"last": WEIGHTS, "best": BEST}  # what --checkpoint names


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) contents to disk, so that a rename publishes complete data."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on some systems; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:  # nor fsynced on some file systems
        pass
    finally:
        os.close(fd)


UMASK = os.umask(0o022)
os.umask(UMASK)


def write_temp(path: Path, write: Callable[[Path], None]) -> Path:
    """write(tmp) on a temporary path beside ``path``, flushed to disk; returns tmp (removed on failure)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~UMASK)  # as open() would make it, not mkstemp's owner-only 0600
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_path(Path(tmp))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary path beside ``path``, then rename it into place."""
    tmp = write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def default_path(cfg: Config) -> Path:
    name = re.sub(r"^(npz|npy|folder|h5ad):", "", cfg.data.dataset).strip("/").replace("/", "_")
    name = re.sub(r"\.(npz|npy|h5ad)$", "", name)
    return Path("runs") / f"{cfg.model.model}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def create(path: Path, overwrite: bool) -> Path:
    """A fresh run directory; an existing non-empty one is refused unless ``overwrite``, and one that
    another process is training always."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise RunError(f"{path} already exists; pass --overwrite to replace it, --resume to continue it, or choose another --out")
        if not is_run(path):
            raise RunError(f"{path} exists and is not a run directory; refusing to overwrite it, choose another --out")
        with training_lock(path):
            shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the run directory {path} ({e.strerror or e}); choose another --out") from None
    return path


@contextmanager
def training_lock(path: Path):
    """An exclusive lock on the run directory (flock on the folder itself, so no file is added)
    for as long as a process trains it: a second process, such as a resumed command while the first
    still runs, or an experiment worker orphaned by a killed parent, fails at once instead of
    writing the same checkpoint. The system drops the lock when its holder dies. No lock where the
    system has no flock (Windows)."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):  # no flock, or no folder to guard (the caller's own checks say so)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{path} is being trained by another process; let it finish or stop it "
                           "(then continue with --resume)") from None
        yield
    finally:
        os.close(fd)


def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file()


def write_config(path: Path, cfg: Config, x_shape, source: str, n_classes, validation: dict | None = None,
                 batches: tuple[str, ...] | None = None) -> None:
    """config.json: cfg and the run's metadata; ``validation`` (data.hold_out's record) where a
    validation set was held out, so that it can be drawn again; ``batches``, the names of the batches a
    model conditioned on them (--batch-key) knows, in the order of their codes."""
    meta = {"x_shape": list(x_shape), "data_source": source, "n_classes": n_classes,
            "versions": {"aevb": __version__, "torch": torch.__version__, "python": platform.python_version()}}
    if validation is not None:
        meta["validation"] = validation
    if batches is not None:
        meta["batches"] = list(batches)
    write_text(path / CONFIG, json.dumps({**cfg.to_dict(), "run": meta}, indent=2) + "\n")


def rewrite_config(path: Path, cfg: Config, meta: dict) -> None:
    """config.json with cfg's values (a resume may change epochs and the NaN policy), keeping its metadata."""
    write_text(path / CONFIG, json.dumps({**cfg.to_dict(), "run": meta}, indent=2) + "\n")


def read_config(path: Path) -> tuple[Config, dict]:
    """The run's Config and its 'run' metadata (x_shape, data source, versions)."""
    path = Path(path)
    if not is_run(path):
        raise RunError(f"{path} is not a run directory (no {CONFIG}); pass the folder that 'aevb train' printed")
    file = path / CONFIG
    try:
        d = json.loads(file.read_text())
        meta = d.pop("run")
        shape = meta["x_shape"]
        if not (isinstance(shape, list) and shape and all(type(n) is int and n > 0 for n in shape)):
            raise ValueError(f"x_shape {shape!r} is not a list of positive sizes")
        return Config.from_dict(d, str(file)), meta
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise RunError(f"{file} is corrupt ({type(e).__name__}: {e}); the run cannot be loaded") from None
    except ConfigError as e:
        raise RunError(f"{file} is corrupt ({e}); the run cannot be loaded") from None


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as contiguous cpu tensors, as safetensors stores them."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    schedule=None, algorithm: dict[str, torch.Tensor] | None = None) -> None:
    """Weights (safetensors) and optimizer state + RNG state (+ the learning-rate schedule's state, +
    ``algorithm``, the training algorithm's own state where it has one, e.g. Monte Carlo EM's chains;
    torch.save of tensors and plain values only), both stamped with the epoch so that a resume can
    check they belong together.

    Crash safety: both new files are written in full (and flushed) under temporary names first.
    Then optimizer.pt moves to optimizer.prev.pt, the new optimizer.pt moves in, the new weights
    move in, and optimizer.prev.pt goes. Killed at any point, the folder holds model.safetensors of
    epoch e-1 with an optimizer state of epoch e-1 (optimizer.pt or optimizer.prev.pt), or the
    complete checkpoint of epoch e; ``load_checkpoint`` picks the state that matches the weights."""
    state = weights_of(model)
    trainer = {"optimizer": optimizer.state_dict(), "epoch": epoch, "rng_state": torch.get_rng_state()}
    if schedule is not None:
        trainer["schedule"] = schedule.state_dict()
    if algorithm:
        trainer["algorithm"] = {k: v.detach().cpu() for k, v in algorithm.items()}
    if torch.cuda.is_available():
        trainer["cuda_rng_state"] = torch.cuda.get_rng_state_all()
    temps: list[Path] = []
    try:
        temps.append(write_temp(path / OPTIMIZER, lambda p: torch.save(trainer, p)))
        temps.append(write_temp(path / WEIGHTS, lambda p: save_file(state, str(p), metadata={"epoch": str(epoch)})))
        if (path / OPTIMIZER).exists():
            os.replace(path / OPTIMIZER, path / PREVIOUS)
        os.replace(temps[0], path / OPTIMIZER)
        os.replace(temps[1], path / WEIGHTS)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    (path / PREVIOUS).unlink(missing_ok=True)
    fsync_path(path)


def save_best(path: Path, model: torch.nn.Module, epoch: int) -> None:
    """best.safetensors: the weights of ``epoch``, stamped with it, written atomically. The trainer
    saves it after the epoch's metrics and before its checkpoint, so the checkpoint never runs ahead
    of it; killed in between, a resume redoes that epoch bit-identically and writes it again."""
    state = weights_of(model)
    atomic_write(path / BEST, lambda p: save_file(state, str(p), metadata={"epoch": str(epoch)}))


def remove_stale_temps(path: Path) -> None:
    """Temporary files of a process that was killed while writing (they are never complete files)."""
    for name in (CONFIG, WEIGHTS, OPTIMIZER, METRICS, METRICS_CSV, BEST):
        for tmp in Path(path).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def checkpoint_epoch(path: Path, checkpoint: str = "last") -> int:
    """The epoch of the run's saved weights (``checkpoint`` "last" or "best"); 0 when there are none
    (or they cannot be read)."""
    try:
        with safe_open(str(Path(path) / CHECKPOINTS[checkpoint]), "pt") as f:
            return int((f.metadata() or {}).get("epoch", 0))
    except Exception:
        return 0


def load_weights(path: Path, model: torch.nn.Module, checkpoint: str = "last") -> int:
    """Load the run's weights into model (strictly): ``checkpoint`` "last" (model.safetensors) or
    "best" (best.safetensors); returns the epoch they were saved at."""
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {checkpoint!r}; choose one of: {', '.join(CHECKPOINTS)}")
    file = Path(path) / CHECKPOINTS[checkpoint]
    if checkpoint == "best" and not file.is_file():
        raise RunError(f"{path} has no {BEST}: only a run with a validation set keeps its best epoch; use the last "
                       "checkpoint, or train with --val-fraction")
    if not file.is_file():
        raise RunError(f"{path} has no {WEIGHTS}; the run has not finished an epoch yet: "
                       f"train it with 'aevb train --resume --out {path}'")
    try:
        state = load_file(str(file))
        with safe_open(str(file), "pt") as f:
            epoch = int((f.metadata() or {}).get("epoch", 0))
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise RunError(f"{file} is corrupt or truncated ({type(e).__name__}: {e}); delete the run or restore the file") from None
    bad = [k for k, v in state.items() if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"{file} holds NaN or Inf in {bad[0]}; it is not a usable checkpoint: delete the run or restore the file")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise RunError(f"{file} does not fit the model in {path / CONFIG} ({first}); the files come from different runs") from None
    return epoch


def read_trainer_state(file: Path) -> dict:
    """optimizer.pt through torch.load(weights_only=True): tensors and plain containers only, so
    a pickle that names any other callable is refused before anything runs."""
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols: the refusal below says it all
            warnings.simplefilter("ignore")
            trainer = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as e:  # unpickling refusals, truncation and zip errors all mean the same here
        raise RunError(f"{file} is corrupt or unsafe ({type(e).__name__}); it cannot be resumed: "
                       "delete the run, or train again with --overwrite") from None
    if not (isinstance(trainer, dict) and isinstance(trainer.get("optimizer"), dict) and type(trainer.get("epoch")) is int
            and isinstance(trainer.get("rng_state"), torch.Tensor)):
        raise RunError(f"{file} is not an aevb optimizer checkpoint; it cannot be resumed: delete the run, or train again with --overwrite")
    return trainer


def check_optimizer_state(state: dict, optimizer: torch.optim.Optimizer, file: Path) -> None:
    """The saved optimizer state must be of this optimizer and of these parameter shapes
    (``load_state_dict`` checks only the number of parameters; a mismatch would fail mid-step)."""
    fail = lambda why: RunError(f"{file} is from another model or optimizer ({why}); it cannot be resumed: "
                                "restore the run's own file, or train again with --overwrite")
    try:
        groups, saved = optimizer.param_groups, state["param_groups"]
        if len(saved) != len(groups):
            raise fail(f"{len(saved)} parameter groups, not {len(groups)}")
        param_of = {}
        for g, s in zip(groups, saved):
            if set(s) != set(g):
                raise fail(f"settings {sorted(set(s) - {'params'})}, not {sorted(set(g) - {'params'})}")
            if len(s["params"]) != len(g["params"]):
                raise fail(f"{len(s['params'])} parameters, not {len(g['params'])}")
            param_of.update(zip(s["params"], g["params"]))
        for key, values in state["state"].items():
            p = param_of[key]
            for name, v in values.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                    raise fail(f"{name} of shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}")
    except RunError:
        raise
    except Exception as e:  # missing keys, odd types: not an optimizer state
        raise fail(f"{type(e).__name__}: {e}") from None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule=None,
                    algorithm=None) -> int:
    """Restore weights, optimizer, learning-rate schedule, RNG state and the training algorithm's own state
    (``algorithm.load_state_dict``, given {} where none was saved); returns the epoch to continue after (0 when the
    run has not finished an epoch: it starts again from its seed). Also tidies what a killed save
    left: the optimizer state that matches the weights becomes optimizer.pt."""
    path = Path(path)
    remove_stale_temps(path)
    if not (path / WEIGHTS).exists():  # killed before its first checkpoint was complete
        (path / OPTIMIZER).unlink(missing_ok=True)
        (path / PREVIOUS).unlink(missing_ok=True)
        return 0
    epoch = load_weights(path, model)
    candidates = [f for f in (path / OPTIMIZER, path / PREVIOUS) if f.exists()]
    if not candidates:
        raise RunError(f"{path} has no {OPTIMIZER}; it cannot be resumed: restore the file, or train again with --overwrite")
    states, errors = [], []
    for file in candidates:
        try:
            states.append((file, read_trainer_state(file)))
        except RunError as e:
            errors.append(e)
    match = next(((f, t) for f, t in states if t["epoch"] == epoch), None)
    if match is None:
        if errors:  # a corrupt or unsafe optimizer.pt (and no usable previous state)
            raise errors[0]
        found = ", ".join(f"{f.name} (epoch {t['epoch']})" for f, t in states)
        raise RunError(f"{WEIGHTS} (epoch {epoch}) and {found} in {path} disagree; the files come from different "
                       "runs and cannot be resumed: restore the run's own files, or train again with --overwrite")
    file, trainer = match
    check_optimizer_state(trainer["optimizer"], optimizer, file)
    try:
        optimizer.load_state_dict(trainer["optimizer"])
        if schedule is not None and "schedule" in trainer:
            schedule.load_state_dict(trainer["schedule"])
        if algorithm is not None:
            algorithm.load_state_dict(trainer.get("algorithm", {}))
        torch.set_rng_state(trainer["rng_state"])
        if "cuda_rng_state" in trainer and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer["cuda_rng_state"])
    except Exception as e:
        raise RunError(f"{file} is corrupt or from another model ({type(e).__name__}); it cannot be resumed: "
                       "restore the run's own file, or train again with --overwrite") from None
    if file.name == PREVIOUS:
        os.replace(file, path / OPTIMIZER)
    else:
        (path / PREVIOUS).unlink(missing_ok=True)
    return epoch


def json_safe(record: dict) -> dict:
    """NaN and Inf become null, so metrics.jsonl stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def append_metrics(path: Path, record: dict) -> None:
    """Add one epoch's line. The file is rewritten atomically, so a kill never leaves half a line."""
    file = path / METRICS
    old = file.read_text() if file.exists() else ""
    write_text(file, old + json.dumps(json_safe(record)) + "\n")


def read_metrics(path: Path) -> list[dict]:
    file = Path(path) / METRICS
    if not file.exists():
        return []
    try:
        records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{file} is corrupt ({e}); delete the lines that are not JSON") from None
    bad = next((r for r in records if not isinstance(r, dict) or type(r.get("epoch")) is not int), None)
    if bad is not None:
        raise RunError(f"{file} is corrupt (a line without an integer 'epoch': {str(bad)[:80]}); delete that line")
    return records


def truncate_metrics(path: Path, epoch: int) -> None:
    """Keep the metrics of epochs up to ``epoch`` (those a resume continues from)."""
    kept = [r for r in read_metrics(path) if r["epoch"] <= epoch]
    write_text(path / METRICS, "".join(json.dumps(r) + "\n" for r in kept))
