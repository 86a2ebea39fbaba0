"""Every figure of a trained model, one function each: ``fig_xxx(model_or_run, path=None, ...) -> Path``.

``model_or_run`` is a run directory (the model, its test data, labels and metrics are loaded from
it, and the PNG goes to ``RUN/<name>.png`` unless ``path`` says otherwise) or a model (then pass the
data as ``x`` and, for colours by class, ``y``, and a ``path``). Every PNG is written atomically and
has a fixed pixel size: the ``SIZES`` of the matplotlib figures, and for image grids
(rows·(h+1)+1)·scale × (cols·(w+1)+1)·scale for images of h × w pixels.

Each is registered with ``figure(...)`` together with its caption, the ``aevb plot`` options it
takes and the model capability it needs, and ``draw_figures`` draws any or all of them: the CLI's
``aevb plot`` and the HTML report both go through it.

The figures follow Kingma & Welling 2013: training curves against the number of training samples
seen on a log axis (Fig. 2) and the learned 2-D manifold, decoded from a grid of prior quantiles
through the inverse CDF (Fig. 4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch.distributions import Independent, MultivariateNormal, Normal

from .. import rundir
from ..errors import DataError
from ..evaluate import ACTIVE_THRESHOLD, activity, kl_per_dimension, on_simplex, posterior_means
from ..models import ClassLatent, DecodesLatent
from ..registry import Registry
from .grid import image_grid, save_array, save_grid

DPI = 100
SIZES = {  # (width, height) in pixels of the matplotlib figures
    "curves": (720, 450),
    "latent": (640, 560),
    "interpolation": (900, 230),
    "histograms": (960, 720),
    "kl": (720, 400),
}
FIGURES: Registry = Registry("figure")


@dataclass
class FigureSpec:
    """A registered figure: ``draw(model_or_run, path=None, **options)``, a one-line ``summary``
    (``aevb plot --help``), the report's ``caption``, the ``aevb plot`` options it takes, the
    capability a model needs for it (``requires``, in words ``needs``) and whether it draws images
    of the data (``images``)."""

    name: str
    draw: Callable[..., Path]
    summary: str
    caption: str
    options: tuple[str, ...] = ()
    requires: type | None = None
    needs: str = ""
    images: bool = False

    def __call__(self, *args, **kwargs) -> Path:
        return self.draw(*args, **kwargs)

    def applies_to(self, model) -> bool:
        """Whether the model has what the figure needs (image data aside)."""
        return self.requires is None or isinstance(model, self.requires)

    def reason_not(self, model) -> str | None:
        """Why this figure cannot be drawn for ``model``, or None where it can."""
        if not self.applies_to(model):
            return f"the {self.name} figure needs {self.needs}"
        if self.images and not is_image_data(model.x_shape):
            return f"the data of shape {tuple(model.x_shape)} are not images"
        return None


def figure(name: str, summary: str, caption: str, *, options=(), requires: type | None = None, needs: str = "",
           images: bool = False):
    """Register the decorated drawing function as the figure ``name`` (see FigureSpec)."""
    def decorate(draw):
        FIGURES.register(name)(FigureSpec(name, draw, summary, caption, tuple(options), requires, needs, images))
        return draw
    return decorate


def require(name: str, model) -> None:
    """DataError where the figure ``name`` needs a capability that ``model`` lacks."""
    spec = FIGURES[name]
    if not spec.applies_to(model):
        raise DataError(spec.reason_not(model))


def figures_for(model) -> list[str]:
    """The registered figures whose required capability the model has."""
    return [name for name in FIGURES if FIGURES[name].applies_to(model)]


def draw_figures(model_or_run, names=None, path=None, *, test_size: int | None = None, device="cpu",
                 **options) -> Iterator[tuple[str, Path | None, str | None]]:
    """Draw figures of a run directory or Subject, each into ``path`` (one figure) or RUN/NAME.png,
    passing each the ``options`` it takes (None: its default). With ``names``, those figures, and
    one that cannot be drawn raises DataError; without, every figure that applies to the model
    (``figures_for``). Yields (name, path, None) for each drawn and (name, None, reason) for each
    that could not be (data that are not images, ...). A run's model is loaded onto ``device``."""
    s = subject(model_or_run, test_size=test_size, device=device)
    for name in names or figures_for(s.model):
        spec = FIGURES[name]
        reason = spec.reason_not(s.model)
        if reason is None:
            try:
                yield name, spec(s, path, **{k: v for k, v in options.items() if k in spec.options and v is not None}), None
                continue
            except DataError as e:
                reason = str(e)
        if names:
            raise DataError(reason)
        yield name, None, reason


@dataclass
class Subject:
    """What a figure is drawn from: a model, and where known its run directory and test data
    (loaded from the run on first use, the first ``test_size`` images or all) with the names of
    its classes (None: the labels themselves are shown)."""

    model: torch.nn.Module
    run: Path | None = None
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    test_size: int | None = None
    classes: tuple[str, ...] | None = None

    def class_name(self, label) -> str:
        return self.classes[int(label)] if self.classes else str(label)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.model.x_shape)

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    def data(self, what: str) -> torch.Tensor:
        if self.x is None:
            if self.run is None:
                raise ValueError(f"{what} needs data: pass x (test images, shape (N, *x_shape)) with the model")
            self.x, self.y, self.classes = load_test_split(self.run, self.test_size)
        return self.x

    def out(self, path, name: str) -> Path:
        if path is None:
            if self.run is None:
                raise ValueError(f"pass path=... for the {name} figure of a model (a run directory has a default)")
            path = self.run / f"{name}.png"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def load_test_split(run: str | Path, n: int | None = None):
    """The first n test images of a run's dataset (all where n is None), their labels (or None) and
    the names of the classes (or None)."""
    from ..data import in_memory, load_dataset

    cfg, _ = rundir.read_config(Path(run))
    cfg.data.test_size = n
    cfg.data.train_size = 1
    data = load_dataset(cfg.data)
    return in_memory(data.test_x), data.test_y, data.classes


def subject(model_or_run, x=None, y=None, test_size: int | None = None, device="cpu") -> Subject:
    """A Subject from a run directory (its model, loaded onto ``device``; its test split when a figure
    needs data and no x is given) or from a model and the data passed with it."""
    if isinstance(model_or_run, Subject):
        return model_or_run if x is None else Subject(model_or_run.model, model_or_run.run, x, y)
    if isinstance(model_or_run, (str, Path)):
        from ..api import load

        run = Path(model_or_run)
        return Subject(load(run, device), run, x, y, test_size)
    if not isinstance(model_or_run, torch.nn.Module):
        raise TypeError(f"expected a run directory or a model, got {type(model_or_run).__name__}")
    return Subject(model_or_run, None, x, y, test_size)


def _device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def as_images(t: torch.Tensor, x_shape) -> torch.Tensor:
    """Datapoints (N, *x_shape) as images (N, C, H, W) for a grid; DataError where they are not images:
    (C, H, W) with 1 or 3 channels, (H, W), or flat vectors of a square length."""
    x_shape = tuple(x_shape)
    if len(x_shape) == 3 and x_shape[0] in (1, 3):
        return t
    if len(x_shape) == 2:
        return t.unsqueeze(1)
    if len(x_shape) == 1 and math.isqrt(x_shape[0]) ** 2 == x_shape[0]:
        side = math.isqrt(x_shape[0])
        return t.reshape(-1, 1, side, side)
    raise DataError(f"the data of shape {x_shape} are not images, so this figure does not apply; "
                    "the curves, latent, histograms and kl figures do")


def is_image_data(x_shape) -> bool:
    try:
        as_images(torch.zeros(1, *x_shape), x_shape)
    except DataError:
        return False
    return True


MARGINS = {  # fixed margins (fractions of the figure): faster than a layout engine, and the same every time
    "curves": dict(left=0.11, right=0.97, bottom=0.12, top=0.92),
    "latent": dict(left=0.12, right=0.86, bottom=0.1, top=0.93),
    "interpolation": dict(left=0.04, right=0.99, bottom=0.02, top=0.88, hspace=0.08),
    "histograms": dict(left=0.02, right=0.91, bottom=0.05, top=0.92, hspace=0.5, wspace=0.1),
    "kl": dict(left=0.1, right=0.98, bottom=0.13, top=0.91),
}


def _figure(name: str) -> Figure:
    w, h = SIZES[name]
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    fig.subplots_adjust(**MARGINS[name])
    return fig


def _save(fig: Figure, path: Path) -> Path:
    rundir.atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI, pil_kwargs={"compress_level": 3}))
    return path


def _labels(y: torch.Tensor | None, n: int) -> np.ndarray | None:
    return None if y is None else y[:n].cpu().numpy()


def _class_colors(classes) -> list:
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(len(classes))]


def principal_directions(z: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of rows z (N, D): (mean (D,), the k leading unit directions (D, k), the fraction of the
    variance along each). Signs are fixed (largest |entry| positive) so a figure is reproducible."""
    z = z.double()
    mean = z.mean(0)
    _, s, vh = torch.linalg.svd(z - mean, full_matrices=False)
    v = vh[:k].T
    v = v * torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    var = s.pow(2)
    return mean, v, var[:k] / var.sum().clamp(min=1e-300)


# ---------------------------------------------------------------------------------------------


@figure("samples", "draws from the prior, decoded",
        "Samples from the prior: z ~ p(z) decoded to the mean of p(x|z).", options=("n", "seed"), images=True)
def fig_samples(model_or_run, path=None, *, n: int = 64, seed: int = 0, scale: int = 2) -> Path:
    """n draws z ~ p(z) decoded to the mean of p(x|z), as a square-ish grid."""
    s = subject(model_or_run)
    return save_array(samples_grid(s.model, n, seed), s.out(path, "samples"), scale=scale)


def samples_grid(model, n: int = 64, seed: int = 0) -> np.ndarray:
    """The grid (``image_grid``) of n draws z ~ p(z) decoded to the mean of p(x|z), drawn from ``seed``
    (the global CPU generator is put back afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = model.sample(n)
    return image_grid(as_images(images, model.x_shape))


@figure("reconstructions", "test images beside their reconstructions",
        "Test images (odd columns) beside their reconstructions (the mean of p(x|z) at the posterior mean).",
        options=("n",), images=True)
def fig_reconstructions(model_or_run, path=None, *, x=None, n: int = 32, scale: int = 2, test_size=None) -> Path:
    """The first n test images, each followed by its reconstruction (the mean of p(x|z) at the posterior
    mean), 8 pairs a row."""
    s = subject(model_or_run, x, test_size=test_size or n)
    x = s.data("reconstructions")[:n].to(_device(s.model))
    s.model.eval()
    return save_array(reconstructions_grid(s.model, x), s.out(path, "reconstructions"), scale=scale)


def reconstructions_grid(model, x: torch.Tensor) -> np.ndarray:
    """The grid (``image_grid``) of the images x, each followed by its reconstruction (the mean of p(x|z)
    at the posterior mean), 8 pairs a row."""
    pairs = torch.stack([x, model.reconstruct(x)], 1).flatten(0, 1)
    return image_grid(as_images(pairs, model.x_shape), ncols=2 * min(8, len(x)))


@figure("curves", "train and test ELBO against training samples seen, log x axis (Kingma & Welling Fig. 2)",
        "ELBO per datapoint against the number of training samples seen, log x axis (Kingma & Welling 2013, Fig. 2).")
def fig_curves(run_or_metrics, path=None) -> Path:
    """Train and test ELBO per datapoint against the number of training samples seen, log x axis
    (Kingma & Welling 2013, Fig. 2). Takes a run directory or its metrics records."""
    if isinstance(run_or_metrics, (str, Path)):
        run = Path(run_or_metrics)
        rundir.read_config(run)  # a clear error for a folder that is no run
        records, where = rundir.read_metrics(run), run
    elif isinstance(run_or_metrics, Subject):
        run = run_or_metrics.run
        if run is None:
            raise ValueError("the curves figure needs a run directory or a list of metrics records")
        records, where = rundir.read_metrics(run), run
    elif isinstance(run_or_metrics, torch.nn.Module):
        raise ValueError("the curves figure needs a run directory or a list of metrics records, not a model")
    else:
        records, where, run = list(run_or_metrics), None, None
    records = [r for r in records if r.get("samples_seen")]
    if not records:
        raise DataError(f"{where or 'the metrics'} has no finished epoch yet, so there is no curve to draw")
    if not any("train_elbo" in r or "test_elbo" in r for r in records):
        raise DataError(f"{where or 'the metrics'} has no ELBO to draw: its training algorithm reports none "
                        "(Monte Carlo EM: the log p(x, z) of its chains)")
    if path is None and run is None:
        raise ValueError("pass path=... for the curves figure of metrics records")
    path = Path(path) if path is not None else run / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    seen = [r["samples_seen"] for r in records]
    fig = _figure("curves")
    ax = fig.add_subplot()
    for key, label, style in (("train_elbo", "train", "--"), ("test_elbo", "test", "-")):
        values = [r.get(key) for r in records]
        points = [(s, v) for s, v in zip(seen, values) if v is not None]
        if points:
            ax.plot(*zip(*points), style, marker="o", markersize=4, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("ELBO per datapoint (nats)")
    ax.set_title(f"ELBO during training ({len(records)} epoch{'s' if len(records) != 1 else ''})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


@figure("latent", "posterior means of test images, PCA to 2-D, coloured by label",
        "Posterior means of test images; for more than two latent dimensions projected on their two leading "
        "principal directions.")
def fig_latent(model_or_run, path=None, *, x=None, y=None, max_points: int = 5000, test_size=None) -> Path:
    """Posterior means E[z|x] of up to max_points test images: the latent coordinates themselves for
    1 or 2 latent dimensions, the two leading principal directions for more; coloured by label where
    labels exist."""
    s = subject(model_or_run, x, y, test_size=test_size)
    x = s.data("the latent figure")[:max_points].to(_device(s.model))
    means = posterior_means(s.model, x).cpu().double()
    labels = _labels(s.y, len(x))
    d = means.shape[1]
    if d > 2:
        centre, v, ratio = principal_directions(means)
        xy = ((means - centre) @ v).numpy()
        axis = [f"PC{i + 1} ({100 * r:.0f}% of variance)" for i, r in enumerate(ratio.tolist())]
        how = f"PCA of {d} dimensions"
    elif d == 2:
        xy, axis, how = means.numpy(), ["z1", "z2"], "2 dimensions"
    else:
        jitter = np.random.default_rng(0).uniform(-0.4, 0.4, len(means))
        xy = np.stack([means[:, 0].numpy(), (labels if labels is not None else np.zeros(len(means))) + jitter], 1)
        axis, how = ["z1", "label (jittered)" if labels is not None else "(jitter)"], "1 dimension"
    fig = _figure("latent")
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5, linewidths=0)
    else:
        classes = np.unique(labels)
        for c, color in zip(classes, _class_colors(classes)):
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, alpha=0.6, linewidths=0, color=color, label=s.class_name(c))
        ax.legend(title="label", markerscale=4, fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    ax.set_title(f"posterior means E[z|x] of {len(x)} test images ({how})", fontsize="medium")
    return _save(fig, s.out(path, "latent"))


def prior_quantiles(model, directions: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (j + ½)/n quantiles, j < n, of the prior's projection on each unit direction (D, k), shape
    (k, n): through the inverse CDF where the prior is Gaussian (Kingma & Welling 2013, Fig. 4), else
    the empirical quantiles of 20,000 prior draws. Also the centre c (D,): the prior mean with its
    components along the directions removed, so that z = c + Σ_i u_i v_i."""
    prior = model.prior()
    directions = directions.double()
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    gaussian = isinstance(prior, MultivariateNormal) or (
        isinstance(prior, Independent) and isinstance(prior.base_dist, Normal) and prior.reinterpreted_batch_ndims == 1)
    if gaussian:
        mean = prior.mean.detach().double().cpu()
        cov = prior.covariance_matrix if isinstance(prior, MultivariateNormal) else torch.diag_embed(prior.variance)
        cov = cov.detach().double().cpu()
        loc = mean @ directions
        scale = torch.einsum("di,de,ei->i", directions, cov, directions).sqrt()
        u = torch.stack([Normal(loc[i], scale[i]).icdf(p) for i in range(directions.shape[1])])
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            draws = prior.sample((20000,)).detach().double().cpu()
        mean = draws.mean(0)
        u = torch.quantile(draws @ directions, p, dim=0).T
    return u, mean - directions @ (directions.T @ mean)


def prior_quantile_grid(model, directions: torch.Tensor, n: int) -> torch.Tensor:
    """Latent points (n·n, D) on a grid of prior quantiles along two unit directions (D, 2), row by
    row: rows from high u2 (top) to low u2, columns from low u1 to high u1 (a plot's orientation)."""
    (u1, u2), centre = prior_quantiles(model, directions, n)
    directions = directions.double()
    z = centre + u2.flip(0)[:, None, None] * directions[:, 1] + u1[None, :, None] * directions[:, 0]
    return z.reshape(n * n, -1).float()


@figure("manifold", "decoded grid of prior quantiles (Kingma & Welling Fig. 4; principal directions beyond 2-D)",
        "The learned manifold: a grid of prior quantiles decoded through the inverse CDF (Kingma & Welling 2013, Fig. 4); "
        "for more than two latent dimensions along the two leading principal directions of the posterior means.",
        options=("n",), images=True, requires=DecodesLatent,
        needs="a model that decodes z alone (M2 decodes z with a class; its analogies figure shows its decoder)")
def fig_manifold(model_or_run, path=None, *, x=None, n: int = 20, scale: int = 1, test_size=None) -> Path:
    """The learned manifold: the means of p(x|z) decoded from an n × n grid of prior quantiles
    (Kingma & Welling 2013, Fig. 4). Over z1, z2 for 2 latent dimensions; over the two leading
    principal directions of the posterior means of x for more (the other directions at the prior
    mean); one row of n for 1 dimension."""
    s = subject(model_or_run, x, test_size=test_size or 5000)
    require("manifold", s.model)
    model, d = s.model, s.latent_dim
    if on_simplex(model):
        raise DataError("the manifold figure decodes a grid of prior quantiles, which leaves the simplex of topic "
                        "proportions; the interpolation figure shows paths within it")
    model.eval()
    if d == 1:
        u, centre = prior_quantiles(model, torch.ones(1, 1, dtype=torch.float64), n)
        z, ncols = (centre + u[0][:, None]).float(), n
    else:
        if d == 2:
            directions = torch.eye(2, dtype=torch.float64)
        else:
            x = s.data("the manifold of more than 2 latent dimensions")[:5000].to(_device(model))
            directions = principal_directions(posterior_means(model, x).cpu())[1]
        z, ncols = prior_quantile_grid(model, directions, n), n
    with torch.no_grad():
        images = model.decode(z.to(_device(model))).mean
    return save_grid(as_images(images, s.x_shape), s.out(path, "manifold"), ncols=ncols, scale=scale)


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation sin((1-t)Ω)/sin Ω · z0 + sin(tΩ)/sin Ω · z1, Ω the angle between z0 and
    z1 (White 2016); linear where the two are (anti)parallel and Ω does not define a great circle."""
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp(min=1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    t = t[:, None]
    if omega < 1e-4 or math.pi - omega < 1e-4:
        return (1 - t) * z0 + t * z1
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def _endpoints(x, y, classes, indices) -> tuple[int, int, str]:
    """The two test images to interpolate between, and words for the title."""
    present = [] if y is None else torch.unique(y).tolist()
    if indices is None and classes is None:  # a 3 and a 5 where there are such, else the first two labels
        classes = (3, 5) if {3, 5} <= set(present) else tuple(present[:2]) if len(present) >= 2 else None
    if indices is not None:
        i, j = indices
        for k in (i, j):
            if not 0 <= k < len(x):
                raise DataError(f"test image {k} does not exist; choose indices between 0 and {len(x) - 1}")
    elif classes is not None:
        if y is None:
            raise DataError("the test data have no labels to choose classes by; choose test images by index instead")
        found = []
        for c in classes:
            hits = (y == c).nonzero()
            if len(hits) == 0:
                raise DataError(f"no test image has label {c} (labels: {', '.join(map(str, present))}); "
                                "choose other classes or indices")
            found.append(int(hits[0]))
        i, j = found
    else:
        if len(x) < 2:
            raise DataError("the interpolation needs two test images")
        i, j = 0, 1
    label = lambda k: f" (label {int(y[k])})" if y is not None else ""  # noqa: E731
    return i, j, f"test image {i}{label(i)} to test image {j}{label(j)}"


@figure("interpolation", "linear and spherical paths between two test images (default the first 3 and 5)",
        "Decoded points on the line (top) and the great circle (bottom) between the posterior means of two test images.",
        options=("classes", "indices", "steps"), images=True, requires=DecodesLatent,
        needs="a model that decodes z alone (M2 decodes z with a class; its analogies figure shows its decoder)")
def fig_interpolation(model_or_run, path=None, *, x=None, y=None, classes=None, indices=None,
                      steps: int = 10, test_size=None) -> Path:
    """Decoded points on the path between the posterior means of two test images, linear and
    spherical, with the two inputs at the ends: test images ``indices`` where given, else the first
    test image of each of two ``classes`` where labels exist (default a 3 and a 5, or the first two
    labels where there are no 3s or 5s), else the first two."""
    s = subject(model_or_run, x, y, test_size=test_size)
    require("interpolation", s.model)
    x = s.data("the interpolation")
    i, j, what = _endpoints(x, s.y, classes, indices)
    model, device = s.model, _device(s.model)
    model.eval()
    ends = x[[i, j]].to(device)
    z0, z1 = posterior_means(model, ends).double().cpu()
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    paths = [("linear", (1 - t[:, None]) * z0 + t[:, None] * z1)]
    if not on_simplex(model):  # a great circle leaves the simplex; a line between proportions stays on it
        paths.append(("spherical", slerp(z0, z1, t)))
    fig = _figure("interpolation")
    axes = np.atleast_1d(fig.subplots(len(paths), 1))
    for ax, (name, path_z) in zip(axes, paths):
        with torch.no_grad():
            decoded = model.decode(path_z.float().to(device)).mean
        row = torch.cat([ends[:1], decoded, ends[1:]])
        ax.imshow(image_grid(as_images(row, s.x_shape), ncols=len(row)), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name)
    axes[0].set_title(f"from {what}; inputs at the ends", fontsize="medium")
    return _save(fig, s.out(path, "interpolation"))


@figure("histograms", "each latent dimension's posterior means, stacked by class",
        "Histograms of each latent dimension's posterior means over the test images, stacked by class.")
def fig_histograms(model_or_run, path=None, *, x=None, y=None, max_dims: int = 32, bins: int = 40,
                   test_size=None) -> Path:
    """For each latent dimension a histogram of the posterior means E[z_d|x] over the test images,
    stacked by class where labels exist; inactive dimensions (Cov_x E[z_d] ≤ 0.01) titled grey. With
    more than max_dims dimensions, the max_dims of largest variance."""
    s = subject(model_or_run, x, y, test_size=test_size)
    x = s.data("the histograms").to(_device(s.model))
    means = posterior_means(s.model, x).cpu().double()
    labels = _labels(s.y, len(x))
    variance = means.var(0, unbiased=False)
    d = means.shape[1]
    dims = sorted(torch.argsort(variance, descending=True)[:max_dims].tolist())
    cols = math.ceil(math.sqrt(len(dims) * 4 / 3))
    rows = math.ceil(len(dims) / cols)
    fig = _figure("histograms")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    classes = np.unique(labels) if labels is not None else None
    colors = _class_colors(classes) if classes is not None else None
    groups = [np.ones(len(x), bool)] if classes is None else [labels == c for c in classes]
    for ax, k in zip(axes, dims):
        values = means[:, k].numpy()
        edges = np.histogram_bin_edges(values, bins=bins) if np.ptp(values) > 0 else values[0] + np.linspace(-0.5, 0.5, bins + 1)
        bottom = np.zeros(bins)
        for i, sel in enumerate(groups):  # stacked by hand: fill_between draws far faster than hist's patches
            top = bottom + np.histogram(values[sel], bins=edges)[0]
            ax.fill_between(edges, np.append(bottom, bottom[-1]), np.append(top, top[-1]), step="post", linewidth=0,
                            color="C0" if colors is None else colors[i])
            bottom = top
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, max(1, bottom.max()) * 1.05)
        active = variance[k] > ACTIVE_THRESHOLD or on_simplex(s.model)  # no verdict for proportions
        ax.set_title(f"z{k + 1}" + ("" if active else " (inactive)"), fontsize="small",
                     color="black" if active else "grey")
        ax.tick_params(labelsize="x-small")
        ax.set_yticks([])
    for ax in axes[len(dims):]:
        ax.set_axis_off()
    if classes is not None:
        handles = [Patch(color=c, label=s.class_name(name)) for name, c in zip(classes, colors)]
        fig.legend(handles=handles[::-1], title="label", loc="center right", fontsize="small")
    shown = "" if len(dims) == d else f" ({len(dims)} of {d} dimensions, largest variance)"
    fig.suptitle(f"posterior means per latent dimension over {len(x)} test images{shown}", fontsize="medium")
    return _save(fig, s.out(path, "histograms"))


@figure("kl", "KL per latent dimension, active and inactive units",
        "KL(q(z_d|x) || p(z_d)) per latent dimension; grey bars are inactive dimensions (Cov_x E[z_d] ≤ 0.01, "
        "Burda et al. 2015).")
def fig_kl(model_or_run, path=None, *, x=None, test_size=None) -> Path:
    """KL(q(z_d|x) ‖ p(z_d)) per latent dimension, averaged over the test images, as bars: active
    dimensions (Cov_x E[z_d] > 0.01, Burda et al. 2015) in colour, inactive ones grey."""
    s = subject(model_or_run, x, test_size=test_size)
    x = s.data("the KL figure").to(_device(s.model))
    kl = kl_per_dimension(s.model, x)
    if kl is None:
        raise DataError("this model's posterior or prior has no one-dimensional marginals, so there is no KL per dimension")
    a = activity(s.model, x)
    values = np.asarray(kl["kl"])
    active = (a > ACTIVE_THRESHOLD).numpy() | on_simplex(s.model)  # no verdict for proportions on the simplex
    d = len(values)
    fig = _figure("kl")
    ax = fig.add_subplot()
    positions = np.arange(1, d + 1)
    for sel, color, name in ((active, "C0", "active"), (~active, "0.7", "inactive")):
        if sel.any():  # an empty group would still get a legend entry, in the wrong colour
            ax.bar(positions[sel], values[sel], color=color, label=f"{name} ({sel.sum()})")
    if kl["standard_error"] is not None:
        ax.errorbar(positions, values, yerr=2 * np.asarray(kl["standard_error"]), fmt="none", ecolor="black", lw=0.8)
    ax.set_xlabel("latent dimension d")
    ax.set_ylabel("KL(q(z_d|x) || p(z_d)) (nats)")
    if d <= 40:
        ax.set_xticks(positions)
        ax.tick_params(axis="x", labelsize="x-small")
    ax.set_title(f"KL per dimension over {len(x)} test images: total {values.sum():.2f} nats ({kl['method']})",
                 fontsize="medium")
    ax.legend(loc="best", fontsize="small")
    return _save(fig, s.out(path, "kl"))



@figure("analogies", "M2: each test image's style decoded with every class (Kingma et al. 2014 Fig. 1)",
        "M2: each row a test image, then its style z = E[z|x,y] decoded with every class (Kingma et al. 2014, Fig. 1).",
        images=True, requires=ClassLatent, needs="a model with a class variable y in its decoder (m2)")
def fig_analogies(model_or_run, path=None, *, x=None, y=None, n: int = 10, scale: int = 2, test_size=None) -> Path:
    """M2's separation of style and class (Kingma et al. 2014, Fig. 1): each row a test image,
    then its style z = E_q[z|x,y] decoded with every class y' in turn."""
    s = subject(model_or_run, x, y, test_size=test_size)
    require("analogies", s.model)
    x = s.data("the analogies figure")
    y = s.y
    if y is not None:  # one image of each class first, where the labels are known
        firsts = [int(torch.nonzero(y == c)[0]) for c in torch.unique(y)]
        x, y = x[firsts][:n], y[firsts][:n]
    else:
        x = x[:n]
    device = _device(s.model)
    s.model.eval()
    styles = s.model.analogies(x.to(device), None if y is None else y.to(device))  # (n, K, *x_shape)
    rows = torch.cat([x.to(device).unsqueeze(1), styles], 1).flatten(0, 1)
    return save_grid(as_images(rows, s.x_shape), s.out(path, "analogies"), ncols=styles.shape[1] + 1, scale=scale)
