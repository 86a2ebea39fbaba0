"""Faults during training: SIGINT/SIGTERM stop at an epoch boundary with a checkpoint, and --resume
is then bit-identical to a run that was never stopped; a process killed in the middle of a
checkpoint write leaves the previous checkpoint loadable; a NaN loss stops (keeping the last good
checkpoint) or, with --on-nan rollback, rolls back and lowers the learning rate.

The reference is one uninterrupted run (module fixture); every interrupted run must end, after
--resume, with the same weights (torch.equal on every tensor) and the same metrics (timing fields
aside). SIGTERM goes to a real ``python -m aevb.cli train`` process; the SIGINT and SIGKILL cases
go to processes forked from a warm server (test_badinput.CLIServer), which saves ~5 s of imports
each."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import aevb
from aevb import rundir
from aevb.cli import main
from aevb.config import Config
from aevb.data import load_dataset
from aevb.errors import TrainingDiverged, TrainingInterrupted
from aevb.objectives import ESTIMATORS
from aevb.train import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_badinput import CLIServer  # noqa: E402  (the warm fork server of the catalogue)

EPOCHS = 20
FLAGS = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--estimator", "B", "--quiet"]
TIMING = ("seconds", "samples_per_sec")


def config(epochs: int = EPOCHS, **train) -> Config:
    """The config that FLAGS give on the command line."""
    cfg = Config()
    cfg.data.dataset = "digits"
    cfg.model.hidden, cfg.model.latent_dim = [16], 2
    cfg.train.estimator, cfg.train.epochs = "B", epochs
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rundir.read_metrics(run)]


def assert_same_run(run: Path, reference: Path) -> None:
    a, b = load_file(str(run / rundir.WEIGHTS)), load_file(str(reference / rundir.WEIGHTS))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs from the uninterrupted run"
    opt_a = torch.load(run / rundir.OPTIMIZER, weights_only=True)
    opt_b = torch.load(reference / rundir.OPTIMIZER, weights_only=True)
    assert opt_a["epoch"] == opt_b["epoch"] and torch.equal(opt_a["rng_state"], opt_b["rng_state"])
    for (i, s), t in zip(opt_a["optimizer"]["state"].items(), opt_b["optimizer"]["state"].values()):
        for k in s:
            assert torch.equal(s[k], t[k]), f"optimizer state {i}.{k} differs"
    assert metrics(run) == metrics(reference)
    assert not list(run.glob(".*.tmp")) and not (run / rundir.PREVIOUS).exists()


def resume(run: Path, epochs: int = EPOCHS) -> None:
    """--resume through the CLI's main() (in this process: the import of torch is paid once)."""
    assert main(["train", "--resume", "--out", str(run), "--epochs", str(epochs), "--quiet", *NO_REPORT]) == 0


NO_REPORT = ["--no-report"] if "--no-report" in main.__globals__["build_parser"]().format_help() else []


# One thread, here and in the subprocesses: on a shared 2-core machine two threads per tiny matmul
# make an epoch ~20x slower; bit-identity is claimed between runs with the same thread count.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted reference run."""
    return aevb.train(config(), tmp_path_factory.mktemp("straight") / "run", quiet=True)


@pytest.fixture(scope="module")
def server():
    server = CLIServer()
    yield server
    server.close()


def cli(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aevb.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ONE_THREAD, **kw)


def wait_for(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # the server reaps its child at once, so a finished child is gone
        return True
    except ProcessLookupError:
        return False


def lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------------------------------------
# signals


def check_interrupted(run: Path, rc: int, err: str, sig: signal.Signals) -> None:
    assert rc == 128 + sig, err  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith(f"aevb: interrupted by {sig.name}: stopped at the end"), err
    assert "--resume" in err_lines[0] and "Traceback" not in err
    done = rundir.checkpoint_epoch(run)
    assert 2 <= done < EPOCHS and f"checkpoint of epoch {done}" in err_lines[0]
    assert [r["epoch"] for r in rundir.read_metrics(run)] == list(range(1, done + 1))
    assert not list(run.glob(".*.tmp")) and not (run / rundir.PREVIOUS).exists()


def test_sigterm_to_the_command_stops_after_the_epoch_and_resume_is_bit_identical(tmp_path, straight):
    run = tmp_path / "run"
    proc = cli(["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(run)])
    wait_for(lambda: lines(run / rundir.METRICS) >= 2 or proc.poll() is not None, what="two epochs")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    check_interrupted(run, proc.returncode, err, signal.SIGTERM)
    resume(run)
    assert_same_run(run, straight)


def test_sigint_stops_after_the_epoch_and_resume_is_bit_identical(tmp_path, straight, server):
    run = tmp_path / "run"
    pid = server.start(["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(run)], tmp_path, tmp_path / "out")
    try:
        wait_for(lambda: lines(run / rundir.METRICS) >= 2 or not alive(pid), what="two epochs")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        result = server.wait()
    check_interrupted(run, result.rc, result.stderr, signal.SIGINT)
    resume(run)
    assert_same_run(run, straight)


def poison(monkeypatch, action) -> list:
    """Wrap estimator B so that action(call, epoch_step) runs on every training step (not on test
    passes, which run without gradients); returns the list of (epoch, step) seen."""
    estimator, seen = ESTIMATORS["B"], []

    def wrapped(model, x, samples=1, beta=1.0):
        terms = estimator(model, x, samples, beta)
        if torch.is_grad_enabled():
            seen.append(len(seen) + 1)
            return action(len(seen), terms)
        return terms

    monkeypatch.setitem(ESTIMATORS._items, "B", wrapped)
    return seen


STEPS = -(-1437 // 128)  # steps per epoch on digits' 1437 training images


def test_a_second_signal_abandons_the_epoch_and_resume_is_bit_identical(tmp_path, straight, monkeypatch):
    """Two SIGINTs in epoch 3 (at steps 2 and 5): the partial epoch is discarded, the checkpoint of
    epoch 2 is kept, and the resumed run matches the uninterrupted one."""
    def action(call, terms):
        if call in (2 * STEPS + 2, 2 * STEPS + 5):
            os.kill(os.getpid(), signal.SIGINT)
        return terms

    poison(monkeypatch, action)
    with pytest.raises(TrainingInterrupted, match=r"SIGINT: the unfinished epoch was discarded; the checkpoint of epoch 2") as e:
        aevb.train(config(), tmp_path / "run", quiet=True)
    assert e.value.exit_code == 130
    run = tmp_path / "run"
    assert rundir.checkpoint_epoch(run) == 2 and len(rundir.read_metrics(run)) == 2
    monkeypatch.undo()
    resume(run)
    assert_same_run(run, straight)


def test_one_signal_finishes_the_epoch_and_handlers_are_restored(tmp_path, monkeypatch):
    def action(call, terms):
        if call == STEPS + 3:  # epoch 2, step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return terms

    poison(monkeypatch, action)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGTERM: stopped at the end of an epoch; the checkpoint of epoch 2") as e:
        aevb.train(config(epochs=4), tmp_path / "run", quiet=True)
    assert e.value.exit_code == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# ---------------------------------------------------------------------------------------------
# killed while writing a checkpoint

KILLED_IN_SAVE = textwrap.dedent("""
    # set up in the forked child before main(): pause at one point of the epoch-3 checkpoint write
    import os, time
    from pathlib import Path
    from aevb import rundir

    crash_epoch, crash_at, marker = 3, CRASH_AT, Path(MARKER)
    state = {"epoch": None, "renames": 0}
    real_save, real_write_temp, real_replace = rundir.save_checkpoint, rundir.write_temp, os.replace

    def pause():
        marker.touch()
        time.sleep(600)  # the test kills us here

    def save_checkpoint(path, model, optimizer, epoch, schedule=None, algorithm=None):
        state.update(epoch=epoch, renames=0)
        try:
            return real_save(path, model, optimizer, epoch, schedule, algorithm)
        finally:
            state["epoch"] = None

    def write_temp(path, write):
        tmp = real_write_temp(path, write)
        if state["epoch"] == crash_epoch and crash_at == "while-writing" and path.name == "model.safetensors":
            pause()  # the new optimizer state is complete under its temporary name, the weights half-way
        return tmp

    def replace(src, dst):
        if state["epoch"] == crash_epoch:
            if crash_at == f"before-rename-{state['renames']}":
                pause()
            state["renames"] += 1
        return real_replace(src, dst)

    rundir.save_checkpoint, rundir.write_temp, os.replace = save_checkpoint, write_temp, replace
""")


@pytest.mark.parametrize("crash_at", [
    "while-writing",  # temporary files on disk, nothing renamed yet
    "before-rename-1",  # optimizer.pt moved to optimizer.prev.pt, the new one not yet in place
    "before-rename-2",  # the new optimizer.pt in place, the old weights still there
])
def test_sigkill_in_the_middle_of_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, straight, crash_at, server):
    run, marker = tmp_path / "run", tmp_path / "paused"
    setup = f"CRASH_AT, MARKER = {crash_at!r}, {str(marker)!r}\n" + KILLED_IN_SAVE
    pid = server.start(["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(run)], tmp_path, tmp_path / "out", setup)
    try:
        wait_for(lambda: marker.exists() or not alive(pid), what="the pause in the checkpoint write")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        result = server.wait()
    assert result.rc == -signal.SIGKILL, result.stderr
    assert aevb.load(run) is not None and rundir.checkpoint_epoch(run) == 2  # the weights: epoch 2, complete
    # the optimizer state of epoch 2 is still there (optimizer.pt or optimizer.prev.pt) and is found
    trainer = Trainer(config(), load_dataset(config().data))
    assert rundir.load_checkpoint(run, trainer.model, trainer.optimizer) == 2
    assert (run / rundir.OPTIMIZER).exists() and not (run / rundir.PREVIOUS).exists() and not list(run.glob(".*.tmp"))
    resume(run)
    assert_same_run(run, straight)


# ---------------------------------------------------------------------------------------------
# NaN and Inf


def nan_at(*calls):
    def action(call, terms):
        if call in calls:
            terms.objective = terms.objective * float("nan")
        return terms
    return action


def test_nan_stops_through_the_cli_with_one_line_naming_epoch_and_step(tmp_path, monkeypatch, capsys):
    poison(monkeypatch, nan_at(STEPS + 4))
    assert main(["train", *FLAGS, "--epochs", "3", "--out", str(tmp_path / "run"), *NO_REPORT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aevb: error: the loss became nan at epoch 2, step 4"), err
    assert "checkpoint (epoch 1) is kept" in err[0] and "--resume" in err[0] and "--on-nan rollback" in err[0]
    assert rundir.checkpoint_epoch(tmp_path / "run") == 1
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path / "run")] == [1]
    # the advice works: the same NaN (the 4th step after the checkpoint) is rolled back this time
    monkeypatch.undo()
    poison(monkeypatch, nan_at(4))
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--on-nan", "rollback", "--quiet", *NO_REPORT]) == 0
    records = rundir.read_metrics(tmp_path / "run")
    assert [(r["epoch"], r.get("lr"), r.get("nan_rollbacks")) for r in records] == [(1, None, None), (2, 1e-4, 1), (3, 1e-4, 1)]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["on_nan"] == "rollback"


def test_nan_in_the_first_epoch_leaves_no_half_made_run(tmp_path, monkeypatch):
    poison(monkeypatch, nan_at(2))
    with pytest.raises(TrainingDiverged, match="epoch 1, step 2; no epoch was completed"):
        aevb.train(config(epochs=2), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_weights_that_become_nan_with_a_finite_loss_are_never_checkpointed(tmp_path, monkeypatch):
    """The last update of an epoch can turn the weights to NaN while every loss was finite."""
    def action(call, terms):
        if call == 2 * STEPS:  # the last step of epoch 2: a finite loss whose gradient is NaN (0 · ∞)
            terms.objective = terms.objective + torch.sqrt(terms.objective * 0)
        return terms

    poison(monkeypatch, action)
    with pytest.raises(TrainingDiverged, match="parameters became NaN or Inf in epoch 2.*checkpoint \\(epoch 1\\) is kept"):
        aevb.train(config(epochs=3), tmp_path / "run", quiet=True)
    assert all(torch.isfinite(p).all() for p in aevb.load(tmp_path / "run").parameters())


def test_rollback_lowers_the_learning_rate_and_carries_on(tmp_path, monkeypatch):
    poison(monkeypatch, nan_at(STEPS + 3))  # epoch 2, step 3, once
    run = aevb.train(config(epochs=3, on_nan="rollback", nan_lr_factor=0.5), tmp_path / "run", quiet=True)
    records = rundir.read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [(r["lr"], r["nan_rollbacks"]) for r in records] == [(1e-3, 0), (5e-4, 1), (5e-4, 1)]
    assert all(torch.isfinite(p).all() for p in aevb.load(run).parameters())
    opt = torch.load(run / rundir.OPTIMIZER, weights_only=True)
    assert opt["optimizer"]["param_groups"][0]["lr"] == 5e-4  # a resume goes on with the lowered rate
    # the rolled-back epoch 1 is the plain run's epoch 1: rollback restored weights, optimizer and RNG
    monkeypatch.undo()
    plain = aevb.train(config(epochs=1), tmp_path / "plain", quiet=True)
    assert metrics(plain)[0] == {k: v for k, v in metrics(run)[0].items() if k not in ("lr", "nan_rollbacks")}
    # resuming keeps the policy's state: the lowered rate and the count of rollbacks
    aevb.train(config(epochs=4, on_nan="rollback", nan_lr_factor=0.5), run, resume=True, quiet=True)
    assert (rundir.read_metrics(run)[-1]["lr"], rundir.read_metrics(run)[-1]["nan_rollbacks"]) == (5e-4, 1)


def test_rollback_gives_up_after_nan_retries(tmp_path, monkeypatch):
    poison(monkeypatch, lambda call, terms: nan_at(call)(call, terms) if call > STEPS else terms)  # NaN from epoch 2 on
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 1; after 2 rollbacks \(learning rate now 1e-05\), "
                                               r"the last good checkpoint \(epoch 1\).*--nan-retries"):
        aevb.train(config(epochs=3, on_nan="rollback", nan_retries=2), tmp_path / "run", quiet=True)
    assert rundir.checkpoint_epoch(tmp_path / "run") == 1


def test_the_rollback_rerun_of_an_epoch_is_the_same_epoch_at_a_lower_rate(tmp_path, monkeypatch):
    """Rolling back epoch 2 and running it at lr·f gives exactly what a run whose optimizer had lr·f
    from epoch 2 on gives: same batches, same noise (the RNG was restored)."""
    poison(monkeypatch, nan_at(STEPS + 1))
    rolled = aevb.train(config(epochs=2, on_nan="rollback", nan_lr_factor=0.25), tmp_path / "rolled", quiet=True)
    monkeypatch.undo()
    one = aevb.train(config(epochs=1), tmp_path / "manual", quiet=True)
    opt = torch.load(one / rundir.OPTIMIZER, weights_only=True)
    for group in opt["optimizer"]["param_groups"]:
        group["lr"] *= 0.25
    torch.save(opt, one / rundir.OPTIMIZER)
    aevb.train(config(epochs=2), one, resume=True, quiet=True)
    a, b = load_file(str(rolled / rundir.WEIGHTS)), load_file(str(one / rundir.WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_another_process_trains_is_refused_and_left_alone(tmp_path, capsys):
    """While one process holds a run (here the lock, taken as training takes it), --resume and
    --overwrite from another fail in one line and change nothing; released, --resume continues."""
    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--epochs", "1", "--out", str(run), *NO_REPORT]) == 0
    weights = (run / rundir.WEIGHTS).read_bytes()
    capsys.readouterr()
    with rundir.training_lock(run):
        for args in (["--resume", "--epochs", "2"], [*FLAGS, "--epochs", "2", "--overwrite"]):
            assert main(["train", *args, "--out", str(run), "--quiet", *NO_REPORT]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0] == (f"aevb: error: {run} is being trained by another process; let it "
                                                "finish or stop it (then continue with --resume)"), err
            assert (run / rundir.WEIGHTS).read_bytes() == weights and rundir.checkpoint_epoch(run) == 1
    assert main(["train", "--resume", "--epochs", "2", "--out", str(run), "--quiet", *NO_REPORT]) == 0
    assert rundir.checkpoint_epoch(run) == 2 and [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan's reaper may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")
def test_an_experiment_worker_ends_when_its_parent_is_killed(tmp_path):
    """A worker of `aevb experiment ssl --jobs N` whose parent dies by SIGKILL stops within its watch's
    period, instead of training on beside the restarted experiment; without the watch it would sleep 60 s."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, os, time
        from aevb.experiments.ssl import exit_with_parent
        def worker(parent):
            exit_with_parent(parent, every=0.1)
            time.sleep(60)
        if __name__ == "__main__":
            child = multiprocessing.get_context("spawn").Process(target=worker, args=(os.getpid(),))
            child.start()
            print(child.pid, flush=True)
            time.sleep(60)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # a watch started after the parent died ends the child at once, so no race either way
    assert _running(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)
