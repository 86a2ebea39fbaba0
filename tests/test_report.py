"""The report: ``aevb train`` writes it unless --no-report, ``aevb report`` rewrites it with the
evaluation, the page is self-contained, and a real browser (headless Chromium through chromedriver's
WebDriver protocol: tests/browser.py) loads every figure at its full size."""
import json
import re

import pytest
from PIL import Image

import aevb
from aevb.cli import main
from aevb.viz.figures import figures_for

@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "mnist"
    assert main(["train", "--dataset", "mnist", "--out", str(run), "--hidden", "32", "--latent-dim", "4",
                 "--train-size", "300", "--test-size", "200", "--epochs", "2", "--quiet"]) == 0
    return run


def embedded_images(page: str) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_train_writes_a_self_contained_report(mnist_run):
    page = (mnist_run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    names = figures_for(aevb.load(mnist_run))
    assert len(embedded_images(page)) == len(names)  # every figure of the model, embedded
    for name in names:
        assert (mnist_run / f"{name}.png").is_file()
    markup = re.sub(r"<script\b.*?</script>", "", page, flags=re.S)  # plotly.js quotes links it never follows
    assert not re.search(r'(src|href)="(https?:)?//', markup)  # nothing fetched from elsewhere
    assert "Not evaluated yet" in page and '"latent_dim"' not in page  # config is a table, not raw JSON
    assert "<code>latent_dim</code>" in page and "active" in page


def test_report_command_includes_the_evaluation(mnist_run, capsys):
    assert main(["evaluate", str(mnist_run), "--k", "50", "--test-size", "50"]) == 0
    assert main(["report", str(mnist_run), "--test-size", "100"]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (mnist_run / "report.html").read_text()
    ll = json.loads((mnist_run / "eval.json").read_text())["log_likelihood"]
    assert "IWAE bound, k=50" in page and f"{ll['value']:,.3f}" in page
    assert "over 100 test images" in page


def test_no_report_flag(tmp_path):
    assert main(["train", "--dataset", "digits", "--hidden", "8", "--epochs", "1", "--quiet", "--no-report",
                 "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "model.safetensors").is_file() and not (tmp_path / "r" / "report.html").exists()


def test_every_figure_loads_in_chromium(mnist_run, browser, tmp_path):
    browser.open(mnist_run / "report.html")
    images = browser("POST", "execute/async", {"args": [], "script": """
        const done = arguments[arguments.length - 1];
        const all = Array.from(document.images).filter(i => !i.id.startsWith("explorer"));  // the figures
        Promise.all(all.map(i => i.decode().then(() => true, () => false))).then(decoded => done(all.map((i, n) => ({
            alt: i.alt, decoded: decoded[n], complete: i.complete,
            natural: [i.naturalWidth, i.naturalHeight], shown: [i.clientWidth, i.clientHeight]}))));"""})
    assert sorted(i["alt"] for i in images) == sorted(figures_for(aevb.load(mnist_run)))
    for image in images:
        with Image.open(mnist_run / f"{image['alt']}.png") as png:
            size = list(png.size)
        assert image["decoded"] and image["complete"] and image["natural"] == size, image  # loaded, whole
        assert image["shown"][0] > 0 and image["shown"][1] > 0, image  # and visible on the page
    assert browser("GET", "title").startswith("aevb report")
    with Image.open(browser.screenshot(tmp_path / "report.png")) as im:
        low, high = im.convert("L").getextrema()
        assert im.size[0] > 0 and high - low > 100  # rendered, not blank
