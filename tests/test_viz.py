"""Every figure function runs on a tiny model and writes a non-empty PNG of the expected pixel size;
the geometry behind the figures (prior quantiles, PCA directions, slerp) is checked against closed
forms; and ``aevb plot`` draws them from a run directory, refusing mistakes with one line."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import aevb
from aevb.cli import main
from aevb.config import ModelConfig
from aevb.models import build_model
from aevb.viz import (FIGURES, SIZES, fig_curves, fig_histograms, fig_interpolation, fig_kl, fig_latent, fig_manifold,
                      fig_reconstructions, fig_samples)
from aevb.viz.figures import figures_for, principal_directions, prior_quantile_grid, prior_quantiles, slerp

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000, path
    with Image.open(path) as im:
        return im.size


def grid_px(n_images, ncols, side, scale):
    rows = math.ceil(n_images / ncols)
    return (ncols * (side + 1) + 1) * scale, (rows * (side + 1) + 1) * scale


def tiny(latent_dim=3, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(hidden=[8], latent_dim=latent_dim, **kw), (1, 8, 8)).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(60, 1, 8, 8, generator=g), torch.arange(60) % 6


METRICS = [{"epoch": e, "samples_seen": 1000 * e, "train_elbo": -60 + 5 * math.log(e), "test_elbo": -58 + 5 * math.log(e)}
           for e in range(1, 6)]


@pytest.mark.parametrize("latent_dim", [1, 2, 3])
def test_every_figure_writes_a_png_of_the_expected_size(tmp_path, data, latent_dim):
    x, y = data
    model = tiny(latent_dim)
    expected = {
        "samples": (fig_samples(model, tmp_path / "s.png", n=16), grid_px(16, 4, 8, 2)),
        "reconstructions": (fig_reconstructions(model, tmp_path / "r.png", x=x, n=6), grid_px(12, 12, 8, 2)),
        "curves": (fig_curves(METRICS, tmp_path / "c.png"), SIZES["curves"]),
        "latent": (fig_latent(model, tmp_path / "l.png", x=x, y=y), SIZES["latent"]),
        "manifold": (fig_manifold(model, tmp_path / "m.png", x=x, n=5),
                     grid_px(5, 5, 8, 1) if latent_dim == 1 else grid_px(25, 5, 8, 1)),
        "interpolation": (fig_interpolation(model, tmp_path / "i.png", x=x, y=y, classes=(3, 5), steps=6),
                          SIZES["interpolation"]),
        "histograms": (fig_histograms(model, tmp_path / "h.png", x=x, y=y), SIZES["histograms"]),
        "kl": (fig_kl(model, tmp_path / "k.png", x=x), SIZES["kl"]),
    }
    assert set(expected) == set(figures_for(model))  # every figure of a VAE is tested (M2's analogies: test_ssl)
    for name, (path, size) in expected.items():
        assert png_size(path) == size, name
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_figures_without_labels_and_for_every_family(tmp_path, data):
    x, _ = data
    for change in ({"prior": "mixture_of_gaussians"}, {"posterior": "full_normal"}, {"posterior": "student_t"}):
        model = tiny(3, **change)
        for fn in (fig_latent, fig_histograms, fig_kl, fig_manifold, fig_interpolation):
            assert png_size(fn(model, tmp_path / f"{fn.__name__}.png", x=x)) is not None, (change, fn.__name__)


def test_a_model_needs_data_and_a_path(data):
    model = tiny()
    with pytest.raises(ValueError, match="needs data"):
        fig_latent(model, "x.png")
    with pytest.raises(ValueError, match="path="):
        fig_samples(model)


def test_prior_quantile_grid_is_the_inverse_cdf_of_evenly_spaced_probabilities():
    model = tiny(2)
    n = 4
    z = prior_quantile_grid(model, torch.eye(2, dtype=torch.float64), n).reshape(n, n, 2)
    q = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(n) + 0.5) / n)
    assert torch.allclose(z[0, :, 0], q, atol=1e-6)  # columns: u1 rising to the right
    assert torch.allclose(z[:, 0, 1], q.flip(0), atol=1e-6)  # rows: u2 falling downwards, like a plot
    # along a unit direction in 5-D the projection of N(0, I) is N(0, 1), and the grid stays in the plane
    model5 = tiny(5)
    v = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))[0]
    u, centre = prior_quantiles(model5, v, n)
    assert torch.allclose(u, torch.stack([q, q]).double(), atol=1e-6) and centre.abs().max() < 1e-12


def test_prior_quantiles_of_a_mixture_prior_are_empirical_quantiles():
    model = tiny(2, prior="mixture_of_gaussians")
    u, _ = prior_quantiles(model, torch.eye(2, dtype=torch.float64), 9)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        draws = model.prior().sample((200000,)).double()
    p = (torch.arange(9, dtype=torch.float64) + 0.5) / 9
    exact = torch.quantile(draws, p, dim=0).T
    assert torch.allclose(u, exact, atol=0.1)


def test_principal_directions_recover_a_known_plane():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0]
    z = torch.randn(4000, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.5]) @ basis.T
    z = z + 0.01 * torch.randn(4000, 6, generator=g, dtype=torch.float64) + 5
    mean, v, ratio = principal_directions(z)
    assert torch.allclose(mean, torch.full((6,), 5.0, dtype=torch.float64), atol=0.15)
    assert torch.allclose((v.T @ basis).abs(), torch.eye(2, dtype=torch.float64), atol=0.04)  # sampling: ~1/sqrt(4000)
    assert ratio.tolist() == pytest.approx([0.8, 0.2], abs=0.02)


def test_slerp_keeps_the_norm_and_hits_both_ends():
    z0, z1 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    path = slerp(z0, z1, t)
    assert torch.allclose(path[0], z0) and torch.allclose(path[-1], z1)
    assert torch.allclose(path.norm(dim=1), torch.ones(7, dtype=torch.float64))
    assert torch.allclose(path[3], torch.tensor([1, 1, 0], dtype=torch.float64) / math.sqrt(2))
    assert torch.allclose(slerp(z0, 2 * z0, t)[3], 1.5 * z0)  # parallel: the line


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("viz") / "digits"
    assert main(["train", "--dataset", "digits", "--hidden", "16", "--latent-dim", "3", "--epochs", "2",
                 "--train-size", "500", "--quiet", "--no-report", "--out", str(run)]) == 0
    return run


def test_plot_draws_every_figure_of_a_run(digits_run, capsys):
    assert main(["plot", str(digits_run)]) == 0
    out = capsys.readouterr().out
    for name in figures_for(aevb.load(digits_run)):
        assert name in out and png_size(digits_run / f"{name}.png")
    assert png_size(digits_run / "curves.png") == SIZES["curves"]
    assert png_size(digits_run / "manifold.png") == grid_px(400, 20, 8, 1)
    assert main(["plot", str(digits_run), "interpolation", "--classes", "0", "9", "--steps", "4",
                 "--out", str(digits_run / "i09.png")]) == 0
    assert png_size(digits_run / "i09.png") == SIZES["interpolation"]
    assert main(["sample", str(digits_run), "--n", "9"]) == 0
    assert png_size(digits_run / "samples.png") == grid_px(9, 3, 8, 2)


@pytest.mark.parametrize("args, message", [
    (["plot", "{run}", "latnt"], "did you mean 'latent'"),
    (["plot", "{run}", "latent", "kl", "--out", "x.png"], "--out names one PNG"),
    (["plot", "{run}", "latent", "--classes", "1", "2"], "--classes applies to the interpolation figure only"),
    (["plot", "{run}", "interpolation", "--classes", "3", "42"], "no test image has label 42"),
    (["plot", "{run}", "interpolation", "--indices", "0", "100000"], "test image 100000 does not exist"),
    (["plot", "{run}/nope"], "is not a run directory"),
    (["report", "{run}/nope"], "is not a run directory"),
])
def test_plot_mistakes_get_one_line_and_exit_2(digits_run, capsys, args, message):
    assert main([a.replace("{run}", str(digits_run)) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aevb: error: ") and message in err[0], err


def test_plot_skips_image_figures_for_data_that_are_not_images(tmp_path, capsys):
    g = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", x_train=g.random((200, 5)), x_test=g.random((50, 5)),
             y_train=g.integers(0, 3, 200), y_test=g.integers(0, 3, 50))
    run = tmp_path / "vec"
    assert main(["train", "--dataset", f"npz:{tmp_path / 'v.npz'}", "--likelihood", "gaussian", "--hidden", "8",
                 "--latent-dim", "2", "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    assert (run / "report.html").is_file()  # the report leaves the image figures out and says why
    assert "are not images" in (run / "report.html").read_text()
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert "skipped samples" in out and png_size(run / "latent.png") == SIZES["latent"]
    assert main(["plot", str(run), "samples"]) == 2
    assert "are not images" in capsys.readouterr().err
    json.loads((run / "config.json").read_text())


def test_lab_command_lists_and_runs_the_demonstrations(tmp_path, capsys):
    lab = pytest.importorskip("aevb.lab", reason="the lab package does not import here")
    with pytest.raises(SystemExit) as done:
        main(["lab", "--help"])
    assert done.value.code == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in lab.LABS.names())
    assert main(["lab", "elbo-gp"]) == 2
    assert "did you mean 'elbo-gap'" in capsys.readouterr().err
    assert main(["lab", "elbo-gap", "--quick", "--seed", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"figure: {tmp_path / 'lab-elbo-gap.png'}" in out and png_size(tmp_path / "lab-elbo-gap.png")
