"""End to end in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium, never a
downloaded browser) against a real explorer server in a thread. Skipped, with the reason, where
Chromium or Playwright is missing; CI installs Chromium (see .ci/run)."""

import contextlib
import io
import json
import math
import shlex
import statistics
import time
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

import moebif
from moebif import RouterParams

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from moebif.explore.testing import (  # noqa: E402
    chromium_path,
    drag_slider_latencies,
    launch,
    overlay_markers,
    overlay_paths,
    plot_pixel,
    wait_rendered,
)

if chromium_path() is None:
    pytest.skip(
        "no Chromium at /usr/bin/chromium (apt-get install chromium): browser tests skipped",
        allow_module_level=True,
    )

# a browser test that hangs fails instead of blocking the suite
pytestmark = pytest.mark.timeout(180)

N_LOG = 4
REQUESTS: list[str] = []  # every request any page of this module made
BLOCKED: list[str] = []  # the ones that were not for the loopback (aborted)


@pytest.fixture(scope="module")
def router_log(tmp_path_factory):
    from moebif import simulate_batch_router
    from moebif.monitor import write_log

    S, B = 6000, 256
    counts = {}
    for name, kappa, seed in (("0", 0.7, 1), ("1", 1.3, 2)):
        p = RouterParams(a=kappa * N_LOG, gamma=1.0, T=1.0, n_experts=N_LOG)
        run = simulate_batch_router(p, batch=B, eta=0.01, steps=S - 1, runs=1, seed=seed)
        counts[name] = np.rint(run.u_hat[0] * B)
    path = tmp_path_factory.mktemp("log") / "router_log.npz"
    write_log(path, np.arange(S), counts)
    return path


@pytest.fixture(scope="module")
def server(router_log):
    from moebif.explore import read_monitor_log
    from moebif.explore.server import create_app, running_server

    monitor = read_monitor_log(router_log)  # as `moebif explore --log router_log.npz`
    app = create_app(monitor=monitor)
    with running_server(app) as url:
        app.state.explore["runner"].warm.wait(120)
        yield url, app.state.explore, monitor


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


@pytest.fixture(scope="module")
def context(browser):
    """One browser context for the module (plotly.js is fetched once and cached); every
    request any page makes is recorded, and any not for the loopback is aborted."""
    ctx = browser.new_context(viewport={"width": 1500, "height": 1150}, accept_downloads=True)

    def guard(route):
        host = urlparse(route.request.url).hostname
        if host == "127.0.0.1":
            route.continue_()
        else:
            BLOCKED.append(route.request.url)
            route.abort()

    ctx.route("**/*", guard)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context, server):
    pg = context.new_page()
    pg.on("request", lambda r: REQUESTS.append(r.url))
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.responses = []
    pg.on("response", lambda r: pg.responses.append((r.url, r.status)))
    pg.base = server[0]
    yield pg
    pg.close()
    assert not errors, errors


def _text(page, sel):
    return page.inner_text(sel).strip()


def _plot_trace(page, plot, name):
    return page.evaluate(
        """([id, name]) => {
          const t = document.getElementById(id).data.find((t) => t.name === name);
          return t ? {x: Array.from(t.x), y: Array.from(t.y)} : null;
        }""",
        [plot, name],
    )


def _value(page, key):
    return float(page.input_value(f"#n-{key}"))


def _eq_of_page(page):
    """The equilibria the F(y) view draws: ``(y, stable)``, stable filled and unstable hollow."""
    return [(x, stable) for x, _, stable in overlay_markers(page, "plot-state")]


def _click(page, plot, x, y):
    n = page.evaluate("window.__explore.renders")
    page.mouse.click(*plot_pixel(page, plot, x, y))
    wait_rendered(page, n + 1)


def test_pitchfork_cusp_clicks_and_hover(page):
    page.goto(page.base + "?a=1.5&gamma=1&T=1&h=0")
    wait_rendered(page, 1)
    assert _text(page, "#eq-count") == "1 equilibrium"
    assert _text(page, "#regime-two") == "balanced"
    assert len(_eq_of_page(page)) == 1
    # a across 2 gamma T = 2, through the real slider
    n = page.evaluate("window.__explore.renders")
    page.fill("#s-a", "2.5")
    wait_rendered(page, n + 1)
    assert _text(page, "#eq-count") == "3 equilibria"
    assert _text(page, "#regime-two") == "bistable"
    want = moebif.equilibria(RouterParams(a=2.5, gamma=1.0, T=1.0))
    assert _eq_of_page(page) == [(e.y, e.stable) for e in want]
    # V(y) and the bifurcation view show the same three: filled / hollow
    assert [(x, st) for x, _, st in overlay_markers(page, "plot-potential")] == _eq_of_page(page)
    bif = overlay_markers(page, "plot-bifurcation")
    assert [(u, st) for _, u, st in bif] == [(e.u, e.stable) for e in want]

    # clicks in the (a, h) plane: inside the cusp 3 equilibria, outside 1
    H4 = moebif.hysteresis_halfwidth(4.0, 1.0, 1.0)
    for (a, h), count in [((4.0, 0.3 * H4), 3), ((1.0, 0.2), 1), ((4.0, 1.6 * H4), 1)]:
        _click(page, "plot-plane", a, h)
        a_set, h_set = _value(page, "a"), _value(page, "h")
        assert abs(a_set - a) < 0.03 and abs(h_set - h) < 0.03 * max(1.0, 4 * H4)
        p = RouterParams(a=a_set, gamma=1.0, T=1.0, h=h_set)
        assert len(moebif.equilibria(p)) == count
        assert _text(page, "#eq-count").startswith(f"{count} equilibri")
        assert _text(page, "#regime-two") == moebif.regime(p)
        assert [y for y, _ in _eq_of_page(page)] == [e.y for e in moebif.equilibria(p)]

    # the eigenvalue on hover
    _click(page, "plot-plane", 3.0, 0.0)
    eqs = moebif.equilibria(
        RouterParams(a=_value(page, "a"), gamma=1.0, T=1.0, h=_value(page, "h"))
    )
    for e in (eqs[0], eqs[1]):
        page.mouse.move(*plot_pixel(page, "plot-state", e.y, 0.0))
        page.wait_for_selector("#tip:not([hidden])", timeout=5000)
        label = page.inner_text("#tip")
        assert f"eigenvalue Fy = {float(f'{e.eigenvalue:.5g}'):g}" in label.replace("\n", " ")
        assert label.endswith("unstable" if not e.stable else "stable")
        page.mouse.move(5, 5)

    # click on F(y) sets the initial condition of the mean-field curve
    _click(page, "plot-state", -1.0, 0.0)
    y0 = _value(page, "y0")
    assert abs(y0 + 1.0) < 0.05
    (mf,) = overlay_paths(page, "plot-time", "meanfield")
    assert mf[0][0] == pytest.approx(0.0, abs=0.05)  # t = 0, to the drawn pixel
    assert mf[0][1] == pytest.approx(math.tanh(y0 / 2.0), abs=0.01)


def test_trajectory_draws_and_cancel_stops_the_server(page, server):
    state = server[1]
    page.goto(page.base + "?a=3&h=0.08&y0=0&steps=2000&runs=8&seed=3")
    wait_rendered(page, 1)
    page.click("#run")
    page.wait_for_function(
        "document.getElementById('sim-status').textContent.startsWith('done')", timeout=60000
    )
    mean = _plot_trace(page, "plot-time", "simulated mean")
    mf = _plot_trace(page, "plot-time", "mean field (run)")
    ref = moebif.simulate_batch_router(
        RouterParams(a=3.0, gamma=1.0, T=1.0, h=0.08),
        batch=512,
        eta=0.002,
        steps=2000,
        runs=8,
        seed=3,
        record_every=4,
    )
    assert mean["x"] == ref.t.tolist() and mean["y"] == ref.u_mean.tolist()
    assert len(mf["y"]) == len(ref.t)

    # a long run, cancelled from the page: the server's worker must stop
    page.fill("#sim-steps", "10000000")
    page.dispatch_event("#sim-steps", "change")
    page.fill("#sim-runs", "400")
    page.dispatch_event("#sim-runs", "change")
    page.click("#run")
    page.wait_for_function(
        "document.getElementById('sim-status').textContent.startsWith('running') && "
        "document.getElementById('progress').value > 0",
        timeout=60000,
    )
    runner = state["runner"]
    job = [j for j in runner._jobs.values() if j.settings["steps"] == 10_000_000][-1]
    assert job.state == "running" and job.settings["runs"] == 400
    page.click("#cancel")
    assert job.finished_flag.wait(10.0)
    assert job.state == "cancelled" and 0 < job.done_steps < 10_000_000
    calls, done = job.progress_calls, job.done_steps
    time.sleep(0.5)
    # the simulation stopped: no more progress, and the single worker thread is free again
    # (process CPU time is not a measure of this: numba's thread pool and the page's polling use it)
    assert job.progress_calls == calls and job.done_steps == done
    assert runner._pool.submit(lambda: 1).result(timeout=2.0) == 1
    page.wait_for_function(
        "document.getElementById('sim-status').textContent.startsWith('cancelled at')",
        timeout=10000,
    )
    assert page.is_enabled("#run") and not page.is_enabled("#cancel")


def test_zoom_recomputes_back_reset_copy_export(page, tmp_path):
    page.goto(page.base + "?a=3&h=0")
    wait_rendered(page, 1)
    # zoom the plane by dragging a box: the server re-samples the fold inside it
    n = page.evaluate("window.__explore.renders")
    x0, y0 = plot_pixel(page, "plot-plane", 2.1, 0.08)
    x1, y1 = plot_pixel(page, "plot-plane", 2.6, -0.08)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()
    wait_rendered(page, n + 1)
    page.wait_for_function("location.search.includes('plane_a')")  # its own history entry
    last = [u for u, s in page.responses if "/api/views" in u][-1]
    q = parse_qs(urlparse(last).query)
    lo, hi = (float(v) for v in q["plane_a"][0].split(","))
    assert 2.05 < lo < 2.15 and 2.55 < hi < 2.65
    fold = overlay_paths(page, "plot-plane", "fold")
    assert len(fold) == 2 and all(sum(lo <= a <= hi for a, _ in br) >= 250 for br in fold)
    # the clicked point did not move while zooming
    assert (_value(page, "a"), _value(page, "h")) == (3.0, 0.0)

    # a change, then back: the previous state and its zoom return
    n = page.evaluate("window.__explore.renders")
    page.fill("#s-h", "0.5")
    wait_rendered(page, n + 1)
    page.wait_for_function("location.search.includes('h=0.5')")
    n = page.evaluate("window.__explore.renders")
    page.click("#back")
    wait_rendered(page, n + 1)
    assert _value(page, "h") == 0.0 and "plane_a" in page.evaluate("location.search")
    n = page.evaluate("window.__explore.renders")
    page.click("#reset")
    wait_rendered(page, n + 1)
    page.wait_for_function("!location.search.includes('plane_a')")
    assert (_value(page, "a"), _value(page, "h"), _value(page, "N")) == (3.0, 0.0, 8.0)

    # copy as command: the command gives the equilibria the page shows
    page.fill("#s-a", "2.8")
    page.fill("#s-h", "0.05")
    page.wait_for_function(
        "document.getElementById('command').textContent.includes('--a 2.8 ') && "
        "document.getElementById('command').textContent.includes('--h 0.05 ')"
    )
    page.click("#copy")
    cmd = _text(page, "#command").splitlines()[0].split("  #")[0]
    from moebif.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(shlex.split(cmd)[1:]) == 0
    out = json.loads(buf.getvalue())
    assert [e["y"] for e in out["equilibria"]] == [y for y, _ in _eq_of_page(page)]
    assert out["params"]["a"] == _value(page, "a") and out["params"]["h"] == _value(page, "h")

    # export: the plane's CSV, downloaded through the page
    with page.expect_download() as dl:
        page.click("#card-plane .export-csv")
    path = tmp_path / "plane.csv"
    dl.value.save_as(path)
    rows = path.read_text().splitlines()
    assert rows[0].startswith("table,") and any(r.startswith("cusp,") for r in rows)
    with page.expect_download() as dl:
        page.click("#card-branches .export-json")
    dl.value.save_as(tmp_path / "branches.json")
    data = json.loads((tmp_path / "branches.json").read_text())
    assert data["view"] == "branches" and data["point"]["a"] == _value(page, "a")


def test_bad_input_shows_a_message_and_a_4xx(page, tmp_path):
    page.goto(page.base + "?T=0")
    page.wait_for_selector("#error:not([hidden])", timeout=20000)
    assert "T: must be > 0" in _text(page, "#error")
    statuses = [s for u, s in page.responses if "/api/views" in u]
    assert statuses and all(s == 400 for s in statuses)
    # moving the slider clears it
    page.fill("#s-T", "1")
    page.wait_for_function("window.__explore.renders >= 1", timeout=20000)
    assert page.is_hidden("#error")
    # an unreadable log: the message on the page, a 400 from the server
    bad = tmp_path / "broken.csv"
    bad.write_text("step,e0,e1\n0,1,x\n")
    page.set_input_files("#log-file", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=20000)
    assert "log: broken.csv: line 2, column e1: not a number" in _text(page, "#error")
    assert [s for u, s in page.responses if u.endswith("/api/monitor?name=broken.csv")] == [400]


def test_monitor_log_drawn_on_the_regime_diagram(page, server):
    monitor = server[2]
    page.goto(page.base)
    wait_rendered(page, 1)
    assert page.is_visible("#card-monitor")
    assert _value(page, "N") == N_LOG  # the explorer starts at the log's N and k
    for layer in monitor.layers:
        page.select_option("#layer", layer.name)
        used = [f for f in layer.fits if f["used"] and f["kappa"] is not None]
        kap = _plot_trace(page, "plot-monitor", "κ̂")
        assert kap["y"] == [f["kappa"] for f in used]
        alarms = _plot_trace(page, "plot-monitor", "alarms")
        assert alarms["x"] == [a["step"] for a in layer.alarms]
    assert any(a["kind"] == "collapsed" for a in monitor.layers[1].alarms)
    # the regime lines of N = 4: kappa_SN = a_SN / (N gamma T)
    ksn = moebif.collapse_threshold(N_LOG, 1.0, 1.0) / N_LOG
    shapes = page.evaluate("document.getElementById('plot-monitor').layout.shapes.map(s => s.y0)")
    assert any(abs(y - ksn) < 1e-12 for y in shapes)

    # responsiveness, measured here and printed (benchmarks/bench_explore.py checks the targets)
    lat = [x[0] for x in drag_slider_latencies(page, "a", np.linspace(1.0, 5.0, 12))]
    lat += [x[0] for x in drag_slider_latencies(page, "h", np.linspace(-0.5, 0.5, 8))]
    assert len(lat) == 20 and all(x > 0 for x in lat)
    print(
        f"\nexplore slider latency: median {statistics.median(lat):.0f} ms, "
        f"max {max(lat):.0f} ms over {len(lat)} changes (targets: benchmarks/bench_explore.py)"
    )


def test_no_request_left_the_loopback():
    assert REQUESTS, "the browser tests above made no request"
    assert BLOCKED == []
    assert all(urlparse(u).hostname == "127.0.0.1" for u in REQUESTS), set(REQUESTS)


def test_h_slider_resolution_two_expert_label_and_no_zoom_notice(page):
    """The h slider resolves the bistable window (the issue: 0.055 a pixel against H = 0.415);
    the time view says it is the two-expert router when N = 8; plotly's zoom notice is off."""
    page.goto(page.base + "?a=3&gamma=1&T=1&h=0&N=8")
    wait_rendered(page, 1)
    H = moebif.hysteresis_halfwidth(3.0, 1.0, 1.0)
    lo, hi, step, width = page.evaluate(
        "(() => { const s = document.getElementById('s-h');"
        " return [+s.min, +s.max, +s.step, s.getBoundingClientRect().width]; })()"
    )
    per_pixel = (hi - lo) / width
    assert lo <= -H and hi >= H and step < per_pixel
    assert per_pixel <= H / 30, (per_pixel, width)  # 30 pixels or more across H
    # a value between the old 0.005 steps is kept
    n = page.evaluate("window.__explore.renders")
    page.fill("#s-h", "0.413")
    wait_rendered(page, n + 1)
    assert _value(page, "h") == 0.413
    # the time view is two experts, and says so while N = 8
    assert "two experts" in _text(page, "#card-time h3")
    assert page.is_visible("#time-note") and "N = 8" in _text(page, "#time-note")
    n = page.evaluate("window.__explore.renders")
    page.fill("#n-N", "2")
    page.dispatch_event("#n-N", "change")
    wait_rendered(page, n + 1)
    assert not page.is_visible("#time-note")
    # a drag-zoom leaves no plotly notice over the panel titles
    n = page.evaluate("window.__explore.renders")
    x0, y0 = plot_pixel(page, "plot-plane", 2.1, 0.08)
    x1, y1 = plot_pixel(page, "plot-plane", 2.6, -0.08)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=6)
    page.mouse.up()
    wait_rendered(page, n + 1)
    notes = page.evaluate("document.querySelectorAll('.plotly-notifier .notifier-note').length")
    assert notes == 0
