"""The loggers (aevb.logging): metrics.csv and the TensorBoard event files hold what metrics.jsonl holds, a
resume logs every epoch once, and a wrong --logger is one line and exit code 2 before anything is written."""
import csv
import io
import json
import math
import signal
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import aevb
from aevb import rundir
from aevb.cli import main
from aevb.config import Config
from aevb.errors import TrainingInterrupted
from aevb.logging import Csv
from aevb.viz.figures import load_test_split, reconstructions_grid, samples_grid

SMALL = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--quiet", "--no-report"]
ALL = ["--logger", "jsonl,csv,tensorboard", "--log-images-every", "2"]
TIMING = ("seconds", "samples_per_sec")


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def assert_scalars_equal_jsonl(run) -> None:
    """Every numeric metric of metrics.jsonl is a scalar of the same name, once per epoch, at step = epoch, with
    its value rounded to float32 (TensorBoard's simple_value); a null (NaN) in the JSON is a NaN scalar."""
    recs, acc = records(run), events(run)
    keys = {k for r in recs for k, v in r.items() if k != "epoch" and type(v) in (int, float)}
    assert set(acc.Tags()["scalars"]) == keys
    for key in keys:
        logged = [(e.step, e.value) for e in acc.Scalars(key)]
        expected = [(r["epoch"], float(np.float32(r[key]))) for r in recs if key in r]
        assert [s for s, _ in logged] == [s for s, _ in expected], key
        assert all(a == b or math.isnan(a) and b is None for (_, a), (_, b) in zip(logged, expected)), key


def assert_csv_equals_jsonl(run) -> None:
    recs = records(run)
    with open(run / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == list(dict.fromkeys(k for r in recs for k in r))
    assert len(rows) == len(recs)
    for row, rec in zip(rows, recs):
        assert {k: v for k, v in row.items() if v != ""} == {k: str(v) for k, v in rec.items() if v is not None}
        assert all(float(row[k]) == v for k, v in rec.items() if v is not None)  # repr() reads back exactly


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, one_thread):
    run = tmp_path_factory.mktemp("runs") / "logged"
    assert main(["train", *SMALL, *ALL, "--epochs", "3", "--out", str(run)]) == 0
    return run


def test_tensorboard_scalars_equal_metrics_jsonl(logged_run):
    assert [r["epoch"] for r in records(logged_run)] == [1, 2, 3]
    assert_scalars_equal_jsonl(logged_run)


def test_metrics_csv_equals_metrics_jsonl(logged_run):
    assert_csv_equals_jsonl(logged_run)


def test_tensorboard_images_are_the_figures_of_the_model(logged_run):
    """Grids at epochs 2 (every 2) and 3 (the last); the last ones are samples_grid / reconstructions_grid of
    the saved model, as add_image stores them (uint8 of 255·value, grey repeated in 3 channels)."""
    acc, model = events(logged_run), aevb.load(logged_run)
    x, _, _ = load_test_split(logged_run, 32)
    model.eval()
    with torch.no_grad():
        expected = {"samples": samples_grid(model), "reconstructions": reconstructions_grid(model, x)}
    for tag, grid in expected.items():
        images = acc.Images(tag)
        assert [e.step for e in images] == [2, 3]
        png = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("L"), dtype=np.int64)
        assert png.shape == grid.shape
        assert np.abs(png - (grid * 255).astype(np.int64)).max() <= 1  # one grey level: float rounding in decoding


def test_tensorboard_embedding_holds_the_posterior_means(logged_run):
    folder = logged_run / "00003" / "posterior_means"
    x, y, _ = load_test_split(logged_run)
    model = aevb.load(logged_run)
    model.eval()
    means = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
    np.testing.assert_allclose(means, model.embed(x[:1000]).numpy(), rtol=1e-6, atol=1e-6)
    assert (folder / "metadata.tsv").read_text().split() == [str(v) for v in y[:1000].tolist()]
    assert Image.open(folder / "sprite.png").size == (8 * math.ceil(math.sqrt(len(means))),) * 2  # 8×8 digits
    assert "posterior_means:00003" in (logged_run / "projector_config.pbtxt").read_text()


def test_tensorboard_hparams_hold_the_config_and_the_final_test_metrics(logged_run):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = events(logged_run).PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert start.hparams["latent_dim"].number_value == 2 and start.hparams["dataset"].string_value == "digits"
    assert start.hparams["logger"].string_value == "['jsonl', 'csv', 'tensorboard']"
    config = json.loads((logged_run / "config.json").read_text())
    assert set(start.hparams) == set().union(*(config[section] for section in ("data", "model", "train")))
    assert {m.name.tag for m in experiment.metric_infos} == {k for k in records(logged_run)[-1] if k.startswith("test_")}


def test_figures_for_tensorboard_leave_the_training_as_it_was(logged_run, tmp_path):
    """Grids and means drawn mid-training fork the random state: the weights are those of a run without them."""
    assert main(["train", *SMALL, "--epochs", "3", "--out", str(tmp_path / "plain")]) == 0
    a, b = aevb.load(logged_run), aevb.load(tmp_path / "plain")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    strip = lambda recs: [{k: v for k, v in r.items() if k not in TIMING} for r in recs]
    assert strip(records(logged_run)) == strip(records(tmp_path / "plain"))
    assert {p.name for p in (tmp_path / "plain").iterdir()} == {"config.json", "model.safetensors", "optimizer.pt",
                                                                 "metrics.jsonl"}  # the default: jsonl alone


def test_resume_logs_every_epoch_once(tmp_path, monkeypatch, one_thread):
    """Killed after epoch 3 was logged but before its checkpoint: the resume continues from epoch 2, and csv and
    TensorBoard (purge_step) drop the orphaned epoch 3 as metrics.jsonl does."""
    run, save = tmp_path / "run", rundir.save_checkpoint

    def killed_at_3(path, model, optimizer, epoch, schedule=None, algorithm=None):
        if epoch == 3:
            raise TrainingInterrupted("killed", signal.SIGTERM)
        save(path, model, optimizer, epoch, schedule, algorithm)

    monkeypatch.setattr(rundir, "save_checkpoint", killed_at_3)
    assert main(["train", *SMALL, *ALL, "--epochs", "4", "--out", str(run)]) == 143
    assert [r["epoch"] for r in records(run)] == [1, 2, 3] and rundir.checkpoint_epoch(run) == 2
    monkeypatch.setattr(rundir, "save_checkpoint", save)
    assert main(["train", "--resume", "--epochs", "4", "--out", str(run), "--quiet", "--no-report"]) == 0
    assert [r["epoch"] for r in records(run)] == [1, 2, 3, 4]
    assert_csv_equals_jsonl(run)
    assert_scalars_equal_jsonl(run)
    assert [e.step for e in events(run).Images("samples")] == [2, 4]


def test_csv_takes_the_union_of_the_keys_and_leaves_absent_and_null_cells_empty(tmp_path):
    logger = Csv(None, tmp_path, 0)
    logger.epoch({"epoch": 1, "train_elbo": -1.5})
    logger.epoch({"epoch": 2, "train_elbo": float("nan"), "test_accuracy": 0.25})
    assert (tmp_path / "metrics.csv").read_bytes() == b"epoch,train_elbo,test_accuracy\r\n1,-1.5,\r\n2,,0.25\r\n"


def test_logger_names_are_a_list_or_comma_separated():
    for value in ("csv,tensorboard", ["csv", "tensorboard"], ["csv,tensorboard"]):
        assert Config.from_dict({"logger": value}).train.logger == ["csv", "tensorboard"]
    assert Config().train.logger == ["jsonl"]


def test_jsonl_is_written_when_not_listed(tmp_path):
    assert main(["train", *SMALL, "--logger", "csv", "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert [r["epoch"] for r in records(tmp_path / "run")] == [1]
    assert_csv_equals_jsonl(tmp_path / "run")


def test_unknown_logger_is_one_line_with_did_you_mean(tmp_path, capsys):
    assert main(["train", *SMALL, "--logger", "jsonl,tensorbord", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown logger 'tensorbord' (did you mean 'tensorboard'?)" in err
    assert not (tmp_path / "run").exists()


def test_missing_tensorboard_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails as without the package
    assert main(["train", *SMALL, "--logger", "tensorboard", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install aevb[tensorboard]" in err
    assert not (tmp_path / "run").exists()
