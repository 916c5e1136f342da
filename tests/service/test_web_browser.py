"""The dashboard in a real headless Chromium, driven through chromedriver's W3C WebDriver HTTP API (urllib only).

Skips cleanly where /usr/bin/chromium or chromedriver is absent. Leaves screenshots in the test's tmp folder
(dashboard.png, dashboard-red.png, dashboard-phone.png) and a copy of the first in /tmp/astrod-dashboard.png.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import synth
from tests.service.test_web import START, TOKEN, H, Running, W, lights, publish, request, running, wait_for

__all__ = ["running"]  # the fixture, imported for this module's tests

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_COPY = Path("/tmp/astrod-dashboard.png")
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,1000"]


def _chromedriver() -> str | None:
    found = shutil.which("chromedriver")
    return found or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Browser:
    """Just enough of WebDriver: navigate, run a script, resize, screenshot."""

    def __init__(self, endpoint: str, session: str) -> None:
        self.base = f"{endpoint}/session/{session}"

    @staticmethod
    def call(url: str, method: str = "GET", payload: Any = None, timeout: float = 60.0) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            raise AssertionError(f"WebDriver {method} {url}: {err.code} {err.read()[:500]!r}") from err

    def get(self, url: str) -> None:
        self.call(f"{self.base}/url", "POST", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self.call(f"{self.base}/execute/sync", "POST", {"script": script, "args": list(args)})

    def resize(self, width: int, height: int) -> None:
        self.call(f"{self.base}/window/rect", "POST", {"width": width, "height": height})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call(f"{self.base}/screenshot")))
        return path

    def until(self, script: str, *args: Any, timeout: float = 30.0, message: str = "") -> Any:
        """Poll a script until it returns something truthy; on time-out, say what the page showed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(script, *args)
            if value:
                return value
            time.sleep(0.2)
        text = self.js("return document.body.innerText.slice(0, 1500);")
        raise AssertionError(f"timed out waiting for {message or script}; page text:\n{text}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless Chromium under chromedriver, with a fresh profile; both end with the test."""
    driver = _chromedriver()
    if not CHROMIUM.exists() or driver is None:
        pytest.skip("chromium or chromedriver is not installed")
    port = _free_port()
    log = (tmp_path / "chromedriver.log").open("ab")
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=log, stderr=log, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    session: str | None = None
    try:
        wait_for(lambda: _ready(endpoint, proc), timeout=30, message="chromedriver")
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": str(CHROMIUM), "args": [*CHROME_ARGS, f"--user-data-dir={tmp_path / 'profile'}"]}}}}
        session = Browser.call(f"{endpoint}/session", "POST", caps)["sessionId"]
        yield Browser(endpoint, str(session))
    finally:
        if session is not None:
            with contextlib.suppress(Exception):
                Browser.call(f"{endpoint}/session/{session}", "DELETE", timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # chromedriver and any Chromium it left
        proc.wait(timeout=30)
        log.close()


def _ready(endpoint: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"chromedriver exited with {proc.returncode}")
    try:
        return bool(Browser.call(f"{endpoint}/status", timeout=2)["ready"])
    except (OSError, AssertionError):
        return False


CARD = "return document.querySelector(`[data-session='${arguments[0]}']`)"
PREVIEW = """const c = document.querySelector(`[data-session='${arguments[0]}']`);
const img = c && c.querySelector('img');
return img && img.complete && img.naturalWidth > 0 ? [img.getAttribute('src'), img.naturalWidth] : null;"""
CIRCLES = """const c = document.querySelector(`[data-session='${arguments[0]}']`);
const n = c ? c.querySelectorAll('svg.plot-fwhm circle').length : -1;
return n === arguments[1] ? n : null;"""
MARKS = """const c = document.querySelector(`[data-session='${arguments[0]}']`);
const n = c ? c.querySelectorAll('svg.plot-fwhm line.rej-mark').length : -1;
return n === arguments[1] ? n : null;"""


@pytest.mark.slow
def test_dashboard_in_headless_chromium(running: Running, browser: Browser, tmp_path: Path) -> None:
    """The page shows the open session with its preview loaded (naturalWidth > 0) and one FWHM point per frame;
    after more frames the preview's URL changes, the image reloads and the plot has a point per frame again; a
    closed session is listed with a working link to its stack; the progress entry is drawn; the red-light
    palette is remembered across a reload; on a phone-sized window nothing overflows sideways."""
    src = tmp_path / "src"
    m31 = lights(src / "m31", n=6, seed=51)
    m33 = lights(src / "m33", n=2, seed=52, target="M 33")
    # Same target and night, another frame size: the session rejects it (a red mark on the plots, no point).
    odd = synth.make_session(n_frames=1, width=W + 40, height=H + 30, seed=53, n_stars=60, max_shift=6,
                             max_rotation_deg=0.5).write(src / "odd", object="M 31", filter="L",
                                                         start=START + timedelta(hours=1))

    # A session closed through the API, for the closed list.
    publish(m33, running.capture)
    first = wait_for(lambda: [s for s in running.status()["sessions"] if s["target"] == "M 33"
                              and s["stacked"] + s["rejected"] == 2], message="M 33 processed")[0]
    code, _, _ = request(running.port, "POST", f"/api/sessions/{first['id']}/close",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 202

    publish(m31[:3], running.capture)
    session = wait_for(lambda: [s for s in running.status()["sessions"] if s["target"] == "M 31"
                                and s["stacked"] + s["rejected"] == 3 and "preview.jpg" in s["files"]],
                       message="M 31: 3 frames and a preview")[0]
    sid = session["id"]
    wait_for(lambda: any(c["id"] == first["id"] and "stack.fits" in c["files"]
                         for c in running.status()["closed_sessions"]), message="M 33 final stack")
    running.daemon.extra_status = {"progress": {"what": "library build: dark 300 s", "done": 7, "total": 20},
                                   "problems": [{"where": "x:checkpoint", "since": "2026-11-21T22:00:00+00:00",
                                                 "problem": "M 31/L: checkpoint failed: No space left on device "
                                                            "(retrying)"}]}

    base = f"http://127.0.0.1:{running.port}/"
    browser.get(base)
    browser.until(CARD, sid, message="the session card")
    src1, width1 = browser.until(PREVIEW, sid, message="the preview image")
    assert width1 > 0
    assert browser.until(CIRCLES, sid, 3, message="3 FWHM points") == 3

    browser.until("return !document.getElementById('progress').hidden;", message="the progress bar")
    text = browser.js("return document.body.innerText;")
    assert "M 31/L" in text and "M 33/L" in text
    assert "library build: dark 300 s" in text and "7 / 20" in text
    problems = browser.js("return document.getElementById('problems').innerText;")
    assert "Problems now" in problems and "checkpoint failed: No space left on device" in problems
    stack_href = browser.js("const a = [...document.querySelectorAll('#closed a')].find(a => a.textContent === "
                            "'stack'); return a && a.getAttribute('href');")
    assert stack_href and stack_href.endswith("/stack.fits")
    assert request(running.port, "GET", stack_href)[0] == 200

    # More frames: the preview is rewritten and the page reloads it (new cache-busting URL); a point per frame
    # with a FWHM, a rejection mark per rejected frame.
    publish(odd + m31[3:], running.capture)
    assert browser.until(CIRCLES, sid, 6, timeout=60, message="6 FWHM points") == 6
    marks = browser.until(MARKS, sid, 1, timeout=30, message="1 rejection mark")
    assert marks == 1
    src2, width2 = browser.until(PREVIEW.replace("? [img", "&& img.getAttribute('src') !== arguments[1] ? [img"),
                                 sid, src1, timeout=30, message="a new preview")
    assert src2 != src1 and width2 > 0
    frames = running.daemon.journal.files(session=sid)
    assert [r.status for r in frames].count("stacked") == 6 == sum(1 for r in frames if "fwhm" in r.metrics)
    assert [r.status for r in frames].count("rejected") == 1
    assert browser.js("return document.querySelector('.chip.bad').textContent;").endswith(": 1")

    browser.resize(1280, 1250)  # the whole page of a night with one open and one closed session
    shot = browser.screenshot(tmp_path / "dashboard.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copyfile(shot, SCREENSHOT_COPY)

    # Red light: toggled, remembered in localStorage across a reload.
    browser.js("document.getElementById('red-toggle').click();")
    assert browser.js("return document.documentElement.classList.contains('red') && "
                      "localStorage.getItem('astrod-theme');") == "red"
    browser.get(base)
    browser.until(CARD, sid, message="the card after reload")
    assert browser.js("return document.documentElement.classList.contains('red');") is True
    browser.until(PREVIEW, sid, message="the preview after reload")
    browser.screenshot(tmp_path / "dashboard-red.png")
    browser.js("document.getElementById('red-toggle').click();")

    # A phone: one column, nothing wider than the screen.
    browser.resize(390, 1400)
    browser.get(base)
    browser.until(CARD, sid, message="the card on a phone")
    browser.until(PREVIEW, sid, message="the preview on a phone")
    overflow = browser.js("return document.documentElement.scrollWidth - window.innerWidth;")
    assert overflow <= 0
    browser.screenshot(tmp_path / "dashboard-phone.png")


FIGURE_HEIGHTS = """const cards = [...document.querySelectorAll('[data-session]')].map((card) => {
  const cells = [...card.querySelectorAll('.last .metrics span')];
  const box = card.getBoundingClientRect();
  return {id: card.dataset.session, top: Math.round(box.top), left: Math.round(box.left), cells: cells.map((c) => ({
    text: c.textContent, height: c.getBoundingClientRect().height,
    line: parseFloat(getComputedStyle(c).lineHeight)}))};
});
return cards.length === 2 && cards.every((card) => card.cells.length >= 12) ? cards : null;"""


def test_last_frame_figures_do_not_wrap_in_two_columns(browser: Browser, tmp_path: Path) -> None:
    """At 1280 px with two open sessions side by side, every figure of the last-frame block (labels and values)
    stays within two lines: it used to wrap one character per line."""
    from astrod.service.web import WebServer
    from tests.service.test_web import make_config

    last = {"path": "/capture/M_31_L_300s_20261121T210000_0042.fits", "status": "stacked", "fwhm": 2.4567,
            "stars": 1234, "background": 1523.7, "eccentricity": 0.4321, "weight": 0.98765, "ms_total": 1234.0}

    def session(n: int, target: str) -> dict[str, Any]:
        return {"id": f"2026-11-21_{n}", "label": f"{target}/Ha", "target": target, "filter": "Ha",
                "night": "2026-11-21", "stacked": 42, "rejected": 3, "total_exposure_s": 12600.0, "queue": 1,
                "last_frame": last, "rejections": {"FWHM 3.77 px is 2.10× the session's median": 3},
                "output": str(tmp_path / "nowhere"), "closing": False}

    status = {"running": True, "pid": 1, "version": "test", "sessions": [session(1, "M 31"), session(2, "NGC 7000")],
              "closed_sessions": [], "library": {"path": "lib", "masters": {}}, "errors": [], "files": {},
              "status_line": "two sessions"}
    server = WebServer(make_config(tmp_path / "obs"), status=lambda: status, frames=lambda sid: [], port=0)
    server.start()
    try:
        browser.resize(1280, 900)
        browser.get(f"http://127.0.0.1:{server.port}/")
        cards = browser.until(FIGURE_HEIGHTS, message="two cards with their last-frame figures")
        browser.screenshot(tmp_path / "two-columns.png")
    finally:
        server.stop()
    assert browser.js("return window.innerWidth;") >= 1200
    first, second = cards
    assert first["top"] == second["top"] and first["left"] < second["left"], "the sessions are not side by side"
    for card in cards:
        texts = [c["text"] for c in card["cells"]]
        assert "2.46 px" in texts and "eccentricity" in texts, texts
        for cell in card["cells"]:
            assert cell["height"] <= 2 * cell["line"] + 1, (card["id"], cell)


CURVE = """const c = document.querySelector(`[data-session='${arguments[0]}']`);
const img = c && c.querySelector('img.curve[data-target="T"]');
const link = c && [...c.querySelectorAll('.curve-box a')].find((a) => a.textContent === '(CSV)');
return img && img.complete && img.naturalWidth > 0 && link ? [img.getAttribute('src'), img.naturalWidth,
  link.getAttribute('href')] : null;"""


def test_dashboard_shows_each_targets_light_curve(browser: Browser, tmp_path: Path) -> None:
    """A session whose output folder has lightcurve_T.png and .csv shows the plot (loaded, naturalWidth > 0)
    with a working link to the CSV; when the plot is rewritten (a new frame), the page loads the new one."""
    from astrod.io.lightcurves import write_lightcurve, write_plot
    from astrod.pipeline.photometry import CSV_COLUMNS, LightCurve
    from astrod.pipeline.photometry_plot import plot_png
    from astrod.service.web import WebServer
    from tests.service.test_web import make_config

    out = tmp_path / "obs" / "stacks" / "2026-11-21" / "M_31" / "L"
    out.mkdir(parents=True)

    def write(n: int) -> None:
        rows = [{"frame": f"f{i}.fits", "jd_utc_mid": 2461000.5 + i / 1440, "bjd_tdb": 2461000.501 + i / 1440,
                 "rel_flux": 1.0 - 0.01 * (10 <= i < 20), "rel_flux_err": 0.002} for i in range(n)]
        curve = LightCurve(target="T", rows=rows, comment="# target T", comparisons=("C1@1,1", "C2@2,2"))
        write_lightcurve(out / "lightcurve_T.csv", curve.comment, rows, CSV_COLUMNS)
        write_plot(out / "lightcurve_T.png", plot_png(curve))

    write(12)
    session = {"id": "2026-11-21_1", "label": "M 31/L", "target": "M 31", "filter": "L", "night": "2026-11-21",
               "stacked": 12, "rejected": 0, "total_exposure_s": 720.0, "queue": 0, "last_frame": {},
               "rejections": {}, "output": str(out), "closing": False}
    status = {"running": True, "pid": 1, "version": "test", "sessions": [session], "closed_sessions": [],
              "library": {"path": "lib", "masters": {}}, "errors": [], "files": {}, "status_line": "one session"}
    server = WebServer(make_config(tmp_path / "obs"), status=lambda: status, frames=lambda sid: [], port=0)
    server.start()
    try:
        browser.resize(1280, 1000)
        browser.get(f"http://127.0.0.1:{server.port}/")
        src1, width, csv_href = browser.until(CURVE, session["id"], message="the light curve")
        assert width > 0 and csv_href.endswith("/lightcurve_T.csv")
        code, _, body = request(server.port, "GET", csv_href)
        assert code == 200 and body.startswith(b"# target T\nframe,jd_utc_mid")
        time.sleep(0.05)
        write(30)
        src2, _, _ = browser.until(CURVE.replace("&& link ?", "&& link && img.getAttribute('src') !== arguments[1] ?"),
                                   session["id"], src1, timeout=30, message="the new light curve")
        assert src2 != src1
        browser.screenshot(tmp_path / "lightcurve.png")
    finally:
        server.stop()


REPORT_LOADED = """const pic = document.getElementById('picture'), plots = document.getElementById('plots');
return pic && plots && pic.complete && plots.complete && pic.naturalWidth > 0 && plots.naturalWidth > 0
  ? [pic.naturalWidth, plots.naturalWidth, document.title] : null;"""


def test_session_report_renders_in_headless_chromium(browser: Browser, tmp_path: Path) -> None:
    """A closed session's report.html, reached from the dashboard's 'report' link, renders under the policy the
    dashboard serves it with: the embedded picture and plots load (naturalWidth > 0), its numbers show, and it
    fits a 1280 px window. Leaves report.png in the test's folder (and /tmp/astrod-report.png)."""
    from astrod.pipeline.report import report_html
    from astrod.service.web import WebServer
    from tests.service.test_web import make_config

    config = make_config(tmp_path / "obs")
    folder = config.paths.output / "2026-11-21" / "M 27" / "L"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    picture = np.clip(40 + 8 * rng.standard_normal((300, 450, 3)), 0, 255).astype(np.uint8)
    rows = [{"path": f"f{i}.fits", "status": "stacked" if i != 3 else "rejected", "fwhm": 2.5 + 0.1 * i,
             "stars": 300 - 5 * i, "background": 1500 + 10 * i, "weight": 1.0 - 0.02 * i,
             "date_obs": f"2026-11-21T22:{10 + i:02d}:00.000"} for i in range(8)]
    summary = {"session": "2026-11-21_1", "key": {"target": "M 27", "filter": "L"}, "stacked": 7, "rejected": 1,
               "total_exposure_s": 2100.0, "rejections": {"FWHM 3.77 px is 2.10x the session's median": 1}}
    (folder / "report.html").write_text(report_html(summary, rows, picture=picture, products=["final.fits"]),
                                        encoding="utf-8")
    status = {"running": True, "pid": 1, "version": "test", "sessions": [], "library": {"path": "lib", "masters": {}},
              "closed_sessions": [{"id": "2026-11-21_1", "label": "M 27/L", "stacked": 7, "rejected": 1,
                                   "output": str(folder), "closed_at": "2026-11-22T05:00:00+00:00"}],
              "errors": [], "files": {}, "status_line": "one closed session"}
    server = WebServer(config, status=lambda: status, frames=lambda sid: [], port=0)
    server.start()
    try:
        browser.resize(1280, 1400)
        browser.get(f"http://127.0.0.1:{server.port}/")
        href = browser.until("const a = [...document.querySelectorAll('#closed a')].find(a => a.textContent === "
                             "'report'); return a && a.getAttribute('href');", message="the report link")
        assert href.endswith("/report.html")
        browser.get(f"http://127.0.0.1:{server.port}{href}")
        widths = browser.until(REPORT_LOADED, message="the report's picture and plots")
        text = browser.js("return document.body.innerText;")
        overflow = browser.js("return document.documentElement.scrollWidth - window.innerWidth;")
        shot = browser.screenshot(tmp_path / "report.png")
    finally:
        server.stop()
    assert widths[0] == 450 and widths[1] > 400 and widths[2].startswith("M 27")
    assert "frames rejected" in text and "2.10x the session's median" in text and "35 min 00 s" in text
    assert overflow <= 0
    shutil.copyfile(shot, "/tmp/astrod-report.png")
