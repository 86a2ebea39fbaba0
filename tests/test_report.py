"""The report: ``aevb train`` writes it unless --no-report, ``aevb report`` rewrites it with the
evaluation, the page is self-contained, and a real browser (headless Chromium through chromedriver's
WebDriver protocol, spoken with urllib) loads every figure at its full size."""
import base64
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

import aevb
from aevb.cli import main
from aevb.viz import FIGURES
from aevb.viz.figures import figures_for

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


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
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
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


# --- the browser ---------------------------------------------------------------------------------

def find_chrome():
    chrome = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    return chrome, driver


class WebDriver:
    """The few W3C WebDriver commands this test needs, over HTTP to a local chromedriver."""

    def __init__(self, driver: str, chrome: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chrome, "args": CHROME_FLAGS + ["--window-size=1200,900"]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def __call__(self, method: str, command: str, body=None):
        return self._call(method, f"/session/{self.session}/{command}", body)

    def quit(self):
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    chrome, driver = find_chrome()
    if not (chrome and driver):
        pytest.skip("the report's browser check needs Chromium and chromedriver, which are not installed here "
                    "(Debian: apt-get install chromium chromium-driver; .ci/run installs them in CI)")
    wd = WebDriver(driver, chrome)
    yield wd
    wd.quit()


def test_every_figure_loads_in_chromium(mnist_run, browser, tmp_path):
    browser("POST", "url", {"url": (mnist_run / "report.html").resolve().as_uri()})
    images = browser("POST", "execute/async", {"args": [], "script": """
        const done = arguments[arguments.length - 1];
        const all = Array.from(document.images);
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
    shot = tmp_path / "report.png"
    shot.write_bytes(base64.b64decode(browser("GET", "screenshot")))
    with Image.open(shot) as im:
        low, high = im.convert("L").getextrema()
        assert im.size[0] > 0 and high - low > 100  # rendered, not blank
