"""The report's interactive latent explorer, drawn with Plotly into the static page.

The posterior means E[z|x] of the test images lie in a plane: the latent coordinates themselves for
two dimensions, their two leading principal directions (scikit-learn's PCA) for more. Each point
carries its test image, shown when the pointer hovers it; a click anywhere in the plane shows the
decoder's mean E[x|z] at that point, decoded beforehand on a ``grid`` × ``grid`` lattice over the
plane (for PCA at the lattice point's inverse transform z = μ + u₁v₁ + u₂v₂, the other principal
directions at the means' centre μ), so that the page needs no server. Plotly is an optional extra.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from matplotlib.colors import to_hex
from PIL import Image

from ..evaluate import posterior_means
from ..models import DecodesLatent
from .figures import Subject, _class_colors, _device, as_images, is_image_data

INSTALL = "pip install 'aevb[interactive]'"
GRID = 30  # decoded images per side of the plane: 900 images, ~0.3 MB for MNIST
MAX_POINTS = 5000  # the latent figure's limit: ~2 MB of PNG images for MNIST (plotly.js adds 4.8 MB)
IMAGE_CSS = "width: 140px; height: 140px; image-rendering: pixelated; border: 1px solid #ddd; background: #fff;"
SCRIPT = """
const gd = document.getElementById("{plot_id}"), grid = gd.data[0];
const show = (id, src, caption) => {  // looked up at the event: the images follow the plot in the page
    const img = document.getElementById(id); img.src = src; img.nextElementSibling.textContent = caption; };
const cell = (v, c) => Math.min(c.length - 1, Math.max(0, Math.round((v - c[0]) / (c[1] - c[0]))));
gd.on("plotly_hover", e => { const p = e.points[0];  // trace 0 is the grid, the others the test images
    if (p.curveNumber > 0) show("explorer-hovered", p.customdata, p.text); });
gd.on("plotly_click", e => { const i = cell(e.points[0].y, grid.y), j = cell(e.points[0].x, grid.x);
    show("explorer-decoded", grid.customdata[i][j], `decoded at (${grid.x[j].toFixed(2)}, ${grid.y[i].toFixed(2)})`); });
"""


def png_uri(image: np.ndarray) -> str:
    """An image (C, H, W) in [0, 1], one or three channels, as a PNG data URI of 8-bit pixels."""
    pixels = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Plane:
    """Latent means shown in a plane: their coordinates ``xy`` (N, 2), the map ``to_latent`` from plane
    coordinates (M, 2) back to latent points (M, D), the axis titles and, in words, how."""

    xy: np.ndarray
    to_latent: Callable[[np.ndarray], np.ndarray]
    axes: tuple[str, str]
    how: str


def plane(means: np.ndarray) -> Plane:
    """The plane of latent means (N, D), D ≥ 2: the coordinates themselves for D = 2, else scikit-learn's
    PCA onto the two leading principal directions, mapped back by its inverse transform."""
    d = means.shape[1]
    if d == 2:
        return Plane(means, lambda p: p, ("z1", "z2"), "the two latent dimensions")
    from sklearn.decomposition import PCA

    pca = PCA(2, svd_solver="full").fit(means)
    share = pca.explained_variance_ratio_
    return Plane(pca.transform(means), pca.inverse_transform,
                 tuple(f"PC{i + 1} ({100 * r:.0f}% of variance)" for i, r in enumerate(share)),
                 f"PCA of the {d} latent dimensions by scikit-learn, {100 * share.sum():.0f}% of their variance")


def reason_not(s: Subject) -> str | None:
    """Why the explorer cannot be drawn for the subject's model and data, or None where it can."""
    if s.latent_dim < 2:
        return "the latent explorer needs at least two latent dimensions"
    if not isinstance(s.model, DecodesLatent):
        return "the latent explorer needs a model that decodes z alone (M2 decodes z with a class)"
    if not is_image_data(s.x_shape):
        return f"the data of shape {s.x_shape} are not images"
    return None


@torch.no_grad()
def explorer_figure(s: Subject, max_points: int = MAX_POINTS, grid: int = GRID):
    """The Plotly figure of the explorer (see the module) and the plane it shows: trace 0 a transparent
    heatmap over the plane whose cells hold the decoded images (``customdata``, rows from low to high
    y), then one scatter trace per label (or one without labels) whose points hold their test images."""
    import plotly.graph_objects as go

    model, device = s.model, _device(s.model)
    x = s.data("the latent explorer")[:max_points]
    p = plane(posterior_means(model, x.to(device)).cpu().double().numpy())
    lo = p.xy.min(0)
    hi = np.maximum(p.xy.max(0), lo + 1e-6)  # a plane, however collapsed the means
    gx, gy = (np.linspace(lo[k], hi[k], grid) for k in (0, 1))
    lattice = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)  # row by row, y outer
    z = torch.as_tensor(p.to_latent(lattice), dtype=torch.float32, device=device)
    decoded = as_images(model.decode(z).mean, s.x_shape).cpu().numpy()
    cells = np.array([png_uri(image) for image in decoded], dtype=object).reshape(grid, grid)
    fig = go.Figure(go.Heatmap(x=gx.tolist(), y=gy.tolist(), z=np.zeros((grid, grid)).tolist(),
                               customdata=cells.tolist(), opacity=0, showscale=False, hoverinfo="none", name="decoded"))
    images = [png_uri(image) for image in as_images(x, s.x_shape).cpu().numpy()]
    labels = None if s.y is None else s.y[:len(x)].cpu().numpy()
    groups = ([(None, np.arange(len(x)))] if labels is None
              else [(c, np.flatnonzero(labels == c)) for c in np.unique(labels)])
    colors = [None] if labels is None else _class_colors(np.unique(labels))
    for (label, idx), color in zip(groups, colors):
        name = "test images" if label is None else s.class_name(label)
        text = [f"test image {i}" + ("" if label is None else f", label {name}") for i in idx]
        marker = dict(size=5, opacity=0.75) | ({} if color is None else {"color": to_hex(color)})
        fig.add_trace(go.Scatter(x=p.xy[idx, 0].tolist(), y=p.xy[idx, 1].tolist(), mode="markers", name=name,
                                 text=text, customdata=[images[i] for i in idx], marker=marker,
                                 hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(height=560, margin=dict(l=60, r=20, t=30, b=50), hovermode="closest", plot_bgcolor="#fafafa",
                      showlegend=labels is not None, legend=dict(title="label"),
                      xaxis=dict(title=p.axes[0], range=edges(gx), zeroline=False),
                      yaxis=dict(title=p.axes[1], range=edges(gy), zeroline=False))
    return fig, p, len(x)


def edges(centres: np.ndarray) -> list[float]:
    """The outer edges of a uniform lattice's cells, so that the whole plot is heatmap: a click anywhere hits a cell."""
    half = (centres[1] - centres[0]) / 2
    return [float(centres[0] - half), float(centres[-1] + half)]


def explorer_html(s: Subject, max_points: int = MAX_POINTS, grid: int = GRID) -> str:
    """The explorer as an HTML fragment with plotly.js inline (the page stays one file that works
    offline): the plot, the hovered test image and the image decoded at the clicked point. Without
    Plotly, or where the explorer does not apply, one line saying why."""
    reason = reason_not(s)
    if reason is not None:
        return f'<p class="note">Not drawn: {html.escape(reason)}.</p>'
    try:
        import plotly.io as pio
    except ImportError:
        return f'<p class="note">The interactive latent explorer needs Plotly: <code>{INSTALL}</code>.</p>'
    fig, p, n = explorer_figure(s, max_points, grid)
    plot = pio.to_html(fig, include_plotlyjs=True, full_html=False, post_script=SCRIPT, div_id="explorer-plot",
                       config={"displaylogo": False, "responsive": True}, default_height="560px")
    centre = fig.data[0].customdata[grid // 2][grid // 2]
    first = fig.data[1]
    return (f'<div style="display: grid; grid-template-columns: minmax(0, 1fr) 150px; gap: 1em">{plot}'
            f'<div>{_image("hovered", first.customdata[0], first.text[0])}'
            f'{_image("decoded", centre, "decoded at the centre; click in the plane")}</div></div>'
            f"<p>Posterior means E[z|x] of {n:,} test images ({html.escape(p.how)}), coloured by label: hovering a "
            "point shows its test image; a click anywhere shows the decoder's mean at that point of the plane"
            f"{' (the other principal directions at the centre of the means)' if 'PCA' in p.how else ''}, "
            f"precomputed on a {grid} × {grid} grid.</p>")


def _image(name: str, src: str, caption: str) -> str:
    return (f'<figure><img id="explorer-{name}" src="{src}" alt="{name} image" style="{IMAGE_CSS}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
