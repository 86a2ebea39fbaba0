"""The report's latent explorer: its plane and its decoded grid against closed forms, the one line a
report gives without Plotly, and a real browser (headless Chromium, tests/browser.py) hovering a
point and clicking in the plane of a trained model's report."""
import base64
import io
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from aevb.cli import main
from aevb.config import ModelConfig
from aevb.models import build_model
from aevb.viz.explorer import INSTALL, explorer_figure, explorer_html
from aevb.viz.figures import Subject
from browser import click, move

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("plotly", reason="the latent explorer draws with plotly: pip install 'aevb[interactive]'")


def pixels(uri: str) -> np.ndarray:
    """The 8-bit pixels of a PNG data URI."""
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        return np.asarray(im)


def subject(latent_dim: int) -> Subject:
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=[16], latent_dim=latent_dim), (1, 8, 8)).eval()
    g = torch.Generator().manual_seed(0)
    return Subject(model, x=torch.rand(80, 1, 8, 8, generator=g), y=torch.arange(80) % 4)


@pytest.mark.parametrize("latent_dim", [2, 5])
def test_plane_points_and_decoded_grid(latent_dim):
    """Two dimensions are shown as they are; more are projected on the two leading eigenvectors of the
    means' covariance (numpy's eigh) about their mean, and the grid decodes the point of latent space
    that the plane maps back to: itself, or μ + u₁v₁ + u₂v₂ for PCA."""
    s = subject(latent_dim)
    fig, p, n = explorer_figure(s, grid=6)
    means = s.model.embed(s.x).double().numpy()
    centre = p.to_latent(np.zeros((1, 2)))[0]
    directions = (p.to_latent(np.eye(2)) - centre).T  # (D, 2): v₁, v₂
    if latent_dim == 2:
        np.testing.assert_array_equal(p.xy, means)
        np.testing.assert_array_equal(directions, np.eye(2))
    else:
        np.testing.assert_allclose(centre, means.mean(0), atol=1e-12)
        leading = np.linalg.eigh(np.cov(means.T))[1][:, ::-1][:, :2]
        np.testing.assert_allclose(np.abs(leading.T @ directions), np.eye(2), atol=1e-9)  # the same unit vectors, ± sign
        np.testing.assert_allclose(p.xy, (means - centre) @ directions, atol=1e-9)
    heatmap, points = fig.data[0], fig.data[1:]
    for i, j in ((0, 0), (2, 5), (5, 3)):
        z = centre + heatmap.x[j] * directions[:, 0] + heatmap.y[i] * directions[:, 1]
        with torch.no_grad():
            decoded = s.model.decode(torch.tensor(z, dtype=torch.float32)[None]).mean[0].numpy()
        assert np.abs(pixels(heatmap.customdata[i][j]) - 255 * decoded[0]).max() <= 0.5 + 1e-3  # rounded to 8 bits
    assert heatmap.x[0] == p.xy[:, 0].min() and heatmap.y[-1] == p.xy[:, 1].max()  # the grid spans the points
    assert n == 80 and [t.name for t in points] == ["0", "1", "2", "3"]
    for label, trace in enumerate(points):  # each point carries its own test image, by label
        for text, uri, x in zip(trace.text, trace.customdata, trace.x):
            k = int(re.match(r"test image (\d+), label (\d)", text).group(1))
            assert k % 4 == label and x == p.xy[k, 0]
            np.testing.assert_array_equal(pixels(uri), np.rint(255 * s.x[k, 0].numpy()))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("explorer") / "digits"
    assert main(["train", "--dataset", "digits", "--out", str(run), "--hidden", "64", "--latent-dim", "3",
                 "--epochs", "4", "--batch-size", "32", "--quiet"]) == 0
    return run


def test_without_plotly_the_report_says_how_to_get_it_in_one_line(digits_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly.io now raises ImportError
    monkeypatch.setitem(sys.modules, "plotly.io", None)
    note = f'<p class="note">The interactive latent explorer needs Plotly: <code>{INSTALL}</code>.</p>'
    assert explorer_html(subject(3)) == note
    assert main(["report", str(digits_run), "--out", str(digits_run / "plain.html")]) == 0
    page = (digits_run / "plain.html").read_text()
    assert note in page and "explorer-plot" not in page and page.count('<img src="data:image/png') == 8  # every figure
    assert "at least two latent dimensions" in explorer_html(subject(1))


SHOWN = """const img = document.getElementById(arguments[0]);
           return [img.src, img.nextElementSibling.textContent, img.naturalWidth];"""


def test_hover_and_click_in_chromium(digits_run, browser, tmp_path):
    """The report opens offline; hovering a point shows that test image, clicking in two places of
    the plane shows the grid's decoded image at each, which differ."""
    from aevb.viz.figures import load_test_split

    browser.open(digits_run / "report.html")
    fetched = browser.script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [url for url in fetched if url.startswith(("http:", "https:"))]  # offline: nothing from the network
    browser.script("document.getElementById('explorer-plot').scrollIntoView(); return 0;")
    before = browser.script(SHOWN, "explorer-hovered")
    plane, point, traces = browser.script("""const gd = document.getElementById('explorer-plot');
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
        const p = gd.querySelectorAll('.scatterlayer .trace')[9].querySelector('path.point').getBoundingClientRect();
        return [[r.x, r.y, r.width, r.height], [p.x + p.width / 2, p.y + p.height / 2], gd.data.length];""")
    assert traces == 11  # the grid and the ten classes
    browser.pointer(move(*point), {"type": "pause", "duration": 200})
    src, caption, width = browser.script(SHOWN, "explorer-hovered")
    k, label = map(int, re.match(r"test image (\d+), label (\d)", caption).groups())
    x, y, _ = load_test_split(digits_run)
    assert src != before[0] and label == int(y[k]) == 9 and width == 8
    np.testing.assert_array_equal(pixels(src), np.rint(255 * x[k, 0].numpy()))

    gx, gy, ranges = browser.script("""const gd = document.getElementById('explorer-plot');
        return [gd.data[0].x, gd.data[0].y, [gd._fullLayout.xaxis.range, gd._fullLayout.yaxis.range]];""")
    shown = []
    for fx, fy in ((0.1, 0.15), (0.85, 0.8)):
        browser.pointer(*click(plane[0] + fx * plane[2], plane[1] + fy * plane[3]))
        src, caption, _ = browser.script(SHOWN, "explorer-decoded")
        u = ranges[0][0] + fx * (ranges[0][1] - ranges[0][0])  # the clicked point in plane coordinates
        v = ranges[1][1] - fy * (ranges[1][1] - ranges[1][0])
        cx, cy = map(float, re.fullmatch(r"decoded at \((\S+), (\S+)\)", caption).groups())
        i, j = np.abs(np.array(gy) - cy).argmin(), np.abs(np.array(gx) - cx).argmin()
        # the cell under the pointer, or next to it where the click fell on a point (hovered within 20 px)
        assert abs(gx[j] - u) <= 1.5 * (gx[1] - gx[0]) and abs(gy[i] - v) <= 1.5 * (gy[1] - gy[0])
        cell = "return document.getElementById('explorer-plot').data[0].customdata[arguments[0]][arguments[1]]"
        assert src == browser.script(cell, int(i), int(j))
        shown.append(src)
    assert shown[0] != shown[1] and (pixels(shown[0]) != pixels(shown[1])).any()
    with Image.open(browser.screenshot(tmp_path / "explorer.png")) as im:
        low, high = im.convert("L").getextrema()
        assert high - low > 100  # rendered, not blank
