"""A real browser for the tests: headless Chromium driven through chromedriver's W3C WebDriver
protocol, spoken with urllib (no Selenium), with the few commands the tests need."""
from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MISSING = ("needs Chromium and chromedriver, which are not installed here (Debian: apt-get install chromium "
           "chromium-driver; .ci/run installs them in CI)")


def find_chrome() -> tuple[str | None, str | None]:
    """The paths of a Chromium (or Chrome) binary and of chromedriver, None where missing."""
    chrome = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    return chrome, shutil.which("chromedriver")


class WebDriver:
    """One headless Chromium session: ``wd(method, command, body)`` sends a WebDriver command of the
    session (``wd("POST", "url", {"url": ...})``) and returns its value."""

    def __init__(self, driver: str, chrome: str, size: tuple[int, int] = (1200, 900)):
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
            "binary": chrome, "args": CHROME_FLAGS + [f"--window-size={size[0]},{size[1]}"]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def __call__(self, method: str, command: str, body=None):
        return self._call(method, f"/session/{self.session}/{command}", body)

    def open(self, path: Path) -> None:
        self("POST", "url", {"url": Path(path).resolve().as_uri()})

    def script(self, source: str, *args):
        """The value of a synchronous script (``return ...``) run in the page."""
        return self("POST", "execute/sync", {"script": source, "args": list(args)})

    def pointer(self, *actions: dict) -> None:
        """W3C pointer actions of a mouse, e.g. ``move(x, y)``, ``{"type": "pointerDown", "button": 0}``."""
        self("POST", "actions", {"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                                              "actions": list(actions)}]})
        self("DELETE", "actions")

    def screenshot(self, path: Path) -> Path:
        Path(path).write_bytes(base64.b64decode(self("GET", "screenshot")))
        return Path(path)

    def quit(self):
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(10)


def move(x: float, y: float, duration: int = 50) -> dict:
    """A pointer action: move to (x, y) CSS pixels of the viewport."""
    return {"type": "pointerMove", "origin": "viewport", "x": round(x), "y": round(y), "duration": duration}


def click(x: float, y: float) -> tuple[dict, ...]:
    """Pointer actions: move to (x, y) of the viewport and click the left button there."""
    return (move(x, y), {"type": "pause", "duration": 200}, {"type": "pointerDown", "button": 0},
            {"type": "pause", "duration": 50}, {"type": "pointerUp", "button": 0})


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium session for a test module; skipped, with the reason, without Chromium."""
    chrome, driver = find_chrome()
    if not (chrome and driver):
        pytest.skip(f"the browser check {MISSING}")
    wd = WebDriver(driver, chrome)
    yield wd
    wd.quit()
