"""Driving the explorer in a real browser (Debian's Chromium through Playwright): shared by the
browser tests and ``benchmarks/bench_explore.py``. Nothing is downloaded: Playwright is pointed
at the system's ``chromium`` and never installs a browser of its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = [
    "CHROMIUM_FLAGS",
    "chromium_path",
    "drag_slider_latencies",
    "launch",
    "overlay_markers",
    "overlay_paths",
    "plot_pixel",
    "screenshot",
    "wait_rendered",
]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """``$MOEBIF_CHROMIUM``, else ``/usr/bin/chromium`` (Debian's package), else ``chromium`` on
    the PATH; None when there is none."""
    for cand in (os.environ.get("MOEBIF_CHROMIUM"), "/usr/bin/chromium"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return shutil.which("chromium")


def launch(playwright):
    """A headless Chromium browser from the system's executable (no download)."""
    path = chromium_path()
    if path is None:
        raise FileNotFoundError("no chromium executable (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)


def wait_rendered(page, count: int, timeout: float = 30.0) -> None:
    """Wait until the page has finished ``count`` redraws, or raise (with the page's error)."""
    page.wait_for_function(
        f"window.__explore && (window.__explore.renders >= {count} || window.__explore.errors > 0)",
        timeout=timeout * 1e3,
    )
    err = page.evaluate(
        "document.getElementById('error').hidden ? null : "
        "document.getElementById('error').textContent"
    )
    if err:
        raise AssertionError(f"the page shows an error: {err}")


# one slider change after another, timed in the page: from the input event (as the slider
# fires it) to the end of the redraw of every theory view (plotly's promises resolved and the
# next animation frame reached)
_DRIVE = """async ([key, values]) => {
  const s = document.getElementById('s-' + key);
  const out = [];
  for (const v of values) {
    const done = new Promise((resolve, reject) => {
      const ok = () => { cleanup(); resolve(); };
      const bad = (e) => { cleanup(); reject(new Error(e.detail)); };
      const cleanup = () => {
        document.removeEventListener('explore:rendered', ok);
        document.removeEventListener('explore:error', bad);
      };
      document.addEventListener('explore:rendered', ok);
      document.addEventListener('explore:error', bad);
      setTimeout(() => { cleanup(); reject(new Error('no redraw within 60 s')); }, 60000);
    });
    s.value = String(v);
    s.dispatchEvent(new Event('input', { bubbles: true }));
    s.dispatchEvent(new Event('change', { bubbles: true }));
    await done;
    const L = window.__explore.latencies;
    out.push([L[L.length - 1], window.__explore.lastServerMs]);
  }
  return out;
}"""


def drag_slider_latencies(page, key: str, values) -> list[tuple[float, float]]:
    """Set slider ``key`` to each of ``values`` in turn, waiting for each redraw; returns
    ``(latency ms, server ms)`` per change, as measured by the page."""
    return [tuple(x) for x in page.evaluate(_DRIVE, [key, [float(v) for v in values]])]


def plot_pixel(page, plot_id: str, x: float, y: float) -> tuple[float, float]:
    """Viewport pixel of the data point ``(x, y)`` in a plot (for real mouse clicks)."""
    return tuple(
        page.evaluate(
            """([id, x, y]) => {
              const gd = document.getElementById(id);
              const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
              const fl = gd._fullLayout;
              return [r.left + fl.xaxis.l2p(x), r.top + fl.yaxis.l2p(y)];
            }""",
            [plot_id, x, y],
        )
    )


def overlay_markers(page, plot_id: str, cls: str = "ov-marker") -> list[tuple[float, float, bool]]:
    """The markers a plot's overlay draws: ``(x, y, stable)`` in data coordinates (stable:
    filled, unstable: hollow)."""
    return [
        (float(x), float(y), fill != "#fff")
        for x, y, fill in page.eval_on_selector_all(
            f"#{plot_id} svg.overlay circle.{cls}",
            "els => els.map(e => [e.dataset.x, e.dataset.y, e.getAttribute('fill')])",
        )
    ]


def overlay_paths(page, plot_id: str, cls: str) -> list[list[tuple[float, float]]]:
    """The curves of class ``cls`` that a plot's overlay draws, as data coordinates (read back
    from the drawn SVG through the plot's axes)."""
    return page.evaluate(
        """([id, cls]) => {
          const gd = document.getElementById(id);
          const fl = gd._fullLayout;
          return Array.from(gd.querySelectorAll(`svg.overlay path.${cls}`)).map((p) =>
            (p.getAttribute('d').match(/[ML][^MLZ]+/g) || []).map((seg) => {
              const [px, py] = seg.slice(1).split(',').map(Number);
              return [fl.xaxis.p2l(px), fl.yaxis.p2l(py)];
            }));
        }""",
        [plot_id, cls],
    )


def screenshot(path, query: str = "?a=3&h=0.05&N=8&y0=-0.5&runs=20", *, log=None) -> None:
    """Save a screenshot of the explorer (with a trajectory run, and ``log`` loaded if given):
    ``python -c "from moebif.explore.testing import screenshot; screenshot('shot.png')"``."""
    from playwright.sync_api import sync_playwright

    from .logs import read_monitor_log
    from .server import create_app, running_server

    monitor = read_monitor_log(log) if log is not None else None
    app = create_app(monitor=monitor)
    with running_server(app) as url, sync_playwright() as pw:
        app.state.explore["runner"].warm.wait(120)
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1500, "height": 1000}, device_scale_factor=1)
        page.goto(url + query)
        wait_rendered(page, 1, timeout=60)
        page.click("#run")
        page.wait_for_function(
            "document.getElementById('sim-status').textContent.startsWith('done')", timeout=120000
        )
        page.wait_for_timeout(300)
        page.screenshot(path=str(path), full_page=True)
        browser.close()
