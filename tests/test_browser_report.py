"""The HTML report in a real browser: headless Debian Chromium driven over the DevTools protocol.

Checks what only a browser can: every page loads without console errors or failed requests,
every link and image resolves, nothing is fetched from the network, the first divergence is
visible above the fold, and a prompt holding `<script>` is shown as text instead of run.
A screenshot of the overview is kept as a CI artifact in reports/ci-artifacts/overview.png.

Without /usr/bin/chromium the test skips, except in CI (CI=true), where it fails: CI installs it
(`.ci/run`). Locally: `apt-get install -y chromium`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "reports" / "ci-artifacts"
VIEWPORT = (1280, 800)
XSS_PROMPT = 'A walk <script>window.__xss = 1</script> past "quoted" & <b>bold</b> signs'
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-allow-origins=*", "--hide-scrollbars")


def _chromium_or_skip() -> str:
    binary = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
    missing = None if binary else "chromium is not installed (Debian: apt-get install -y chromium)"
    try:
        import websocket  # noqa: F401
    except ImportError:
        missing = missing or "websocket-client is not installed (pip install websocket-client, or the [test] extra)"
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing}; CI must run the browser test (.ci/run installs chromium)")
        pytest.skip(missing)
    return binary


class Chromium:
    """One headless browser and one page, spoken to over the DevTools protocol (websocket).

    Events are collected as they arrive: console errors, uncaught exceptions, failed and
    non-local requests."""

    def __init__(self, binary: str, profile: Path):
        import websocket

        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port within 30 s")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._id = 0
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.loaded = False
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1], deviceScaleFactor=1, mobile=False)

    def _event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            self.errors.append("exception: " + p["exceptionDetails"].get("text", "") + " " +
                               str(p["exceptionDetails"].get("exception", {}).get("description", "")))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            self.errors.append(f"request failed: {p.get('errorText')}")
        elif method == "Page.loadEventFired":
            self.loaded = True

    def send(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def pump(self, seconds: float) -> None:
        """Process events for a while (the socket times out when nothing arrives)."""
        deadline = time.monotonic() + seconds
        self.ws.settimeout(0.05)
        try:
            while time.monotonic() < deadline:
                try:
                    self._event(json.loads(self.ws.recv()))
                except Exception as exc:  # websocket timeout: nothing pending
                    if type(exc).__name__ != "WebSocketTimeoutException":
                        raise
        finally:
            self.ws.settimeout(30)

    def goto(self, url: str) -> None:
        self.loaded = False
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while not self.loaded:
            assert time.monotonic() < deadline, f"{url} did not finish loading in 30 s"
            self.pump(0.1)

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def run_report(tiny_checkpoint, tmp_path_factory) -> Path:
    """A `make parity` run (upstream vs script, which diverge) on one 3-frame case whose prompt holds
    <script>; returns the run's index.html."""
    from parity.cli import main

    root = tmp_path_factory.mktemp("browser")
    cases = root / "cases"
    cases.mkdir()
    (cases / "xss.toml").write_text(f"prompt = {json.dumps(XSS_PROMPT)}\nseed = 5\nframes = 3\n[controls]\nbuttons = [17]\n")
    assert main(["parity", str(cases), "--out-root", str(root / "out"), "--snapshot", str(tiny_checkpoint), "--device", "cpu"]) == 0
    index = next((root / "out").glob("parity-*/index.html"))
    return index


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = _chromium_or_skip()
    chrome = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.close()


def _overview(run_index: Path) -> Path:
    return next(run_index.parent.glob("xss/upstream__vs__*/index.html"))


def test_every_page_loads_without_errors_and_every_link_and_image_resolves(browser, run_report):
    queue, seen = [run_report.resolve()], set()
    while queue:
        page = queue.pop(0)
        if page in seen:
            continue
        seen.add(page)
        browser.errors.clear()
        browser.goto(page.as_uri())
        # lazy images load only near the viewport: make them eager, then wait for every one
        browser.js("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
        deadline = time.monotonic() + 20
        while browser.js("[...document.images].filter(i => !i.complete).length") and time.monotonic() < deadline:
            browser.pump(0.1)
        broken = browser.js("[...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.getAttribute('src'))")
        assert broken == [], f"{page.name}: images that did not load: {broken[:5]}"
        browser.pump(0.2)
        assert browser.errors == [], f"{page}: {browser.errors[:5]}"
        for href in browser.js("[...document.querySelectorAll('a[href]')].map(a => a.href)"):
            url = urlparse(href)
            assert url.scheme == "file", f"{page.name} links off the file system: {href}"
            target = Path(unquote(url.path))
            assert target.is_file(), f"{page.name}: link to {href} does not resolve"
            if url.fragment:
                assert f'id="{unquote(url.fragment)}"' in target.read_text(), f"{page.name}: anchor {href} is missing"
            if target.suffix == ".html":
                queue.append(target.resolve())
    assert len(seen) >= 1 + 2 + 14  # run index, overview, blur, one page per stage family
    remote = [u for u in browser.requests if not u.startswith(("file:", "data:"))]
    assert remote == [], f"the report fetched from the network: {remote[:5]}"


def test_first_divergence_is_visible_above_the_fold(browser, run_report):
    overview = _overview(run_report)
    expected = json.loads((overview.parent / "summary.json").read_text())["first_divergence"]["explanation"]
    browser.goto(overview.as_uri())
    box = browser.js("""(() => { const e = document.querySelector('#first-divergence'); const r = e.getBoundingClientRect();
        return {top: r.top, bottom: r.bottom, text: e.innerText, height: innerHeight, width: innerWidth,
                verdict: document.querySelector('#verdict').innerText}; })()""")
    assert (box["width"], box["height"]) == VIEWPORT
    assert 0 <= box["top"] and box["bottom"] <= box["height"], f"first divergence spans {box['top']}..{box['bottom']} px"
    assert expected in box["text"] and box["verdict"] == "FAIL"
    shot = ARTIFACTS / "overview.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prompt_with_script_tag_renders_as_text(browser, run_report):
    browser.goto(_overview(run_report).as_uri())
    assert browser.js("typeof window.__xss") == "undefined"
    assert browser.js("document.querySelector('#prompt').innerText") == XSS_PROMPT
    assert browser.js("document.querySelectorAll('#prompt *').length") == 0
    assert browser.js("document.body.innerText.includes('<script>window.__xss = 1</script>')")


def test_flicker_toggle_alternates_a_and_b(browser, run_report):
    browser.goto((_overview(run_report).parent / "stage-decoded.html").as_uri())
    browser.errors.clear()
    visible = "getComputedStyle(document.querySelector('#f0 .ib')).display"
    assert browser.js(visible) == "none"
    browser.js("document.querySelector('#flicker').click()")
    states = set()
    for _ in range(12):
        browser.pump(0.1)
        states.add(browser.js(visible))
    browser.js("document.querySelector('#flicker').click()")
    assert states == {"none", "block"} and browser.js(visible) == "none"
    assert browser.errors == []
