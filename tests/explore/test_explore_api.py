"""The explorer's server against the library, without a browser: every view it returns is what
the library computes (or satisfies the model's equations), bad input is a 4xx with a message."""

import contextlib
import csv
import io
import json
import math
import shlex

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moebif
from moebif import RouterParams
from moebif.model import symmetric, topk

POINTS = [  # (a, gamma, T, h): balanced, bistable, biased, near the cusp, other scales
    (1.5, 1.0, 1.0, 0.0),
    (3.0, 1.0, 1.0, 0.0),
    (3.0, 1.0, 1.0, 0.08),
    (4.0, 1.0, 1.0, 1.5),
    (2.02, 1.0, 1.0, 1e-4),
    (0.7, 0.3, 0.5, -0.05),
    (12.0, 2.0, 0.7, -3.0),
]


@pytest.mark.parametrize("a,gamma,T,h", POINTS)
def test_equilibria_and_curves_are_the_librarys(get_views, a, gamma, T, h):
    d = get_views(a=a, gamma=gamma, T=T, h=h)
    p = RouterParams(a=a, gamma=gamma, T=T, h=h)
    want = [e.to_dict() for e in moebif.equilibria(p)]
    st_ = d["views"]["state"]
    got = [{k: e[k] for k in ("y", "u", "stable", "eigenvalue")} for e in st_["equilibria"]]
    assert got == want  # bit for bit, through JSON
    assert d["n_equilibria"] == len(want)
    assert d["regime"]["two"] == moebif.regime(p)
    assert d["views"]["bifurcation"]["current"]["equilibria"] == want
    y = np.array(st_["y"])
    assert np.array_equal(st_["F"], moebif.drift(y, p))
    assert np.array_equal(st_["V"], moebif.potential(y, p))
    for e in st_["equilibria"]:
        assert e["V"] == float(moebif.potential(e["y"], p))
    assert d["views"]["plane"]["point"]["halfwidth"] == moebif.hysteresis_halfwidth(a, gamma, T)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    a=st.floats(0.0, 20.0),
    gamma=st.floats(0.05, 5.0),
    T=st.floats(0.05, 5.0),
    h=st.floats(-5.0, 5.0),
)
def test_equilibria_any_point(get_views, a, gamma, T, h):
    d = get_views(a=a, gamma=gamma, T=T, h=h, views="state")
    p = RouterParams(a=a, gamma=gamma, T=T, h=h)
    got = [
        {k: e[k] for k in ("y", "u", "stable", "eigenvalue")}
        for e in d["views"]["state"]["equilibria"]
    ]
    assert got == [e.to_dict() for e in moebif.equilibria(p)]
    assert d["regime"]["two"] == moebif.regime(p)


@pytest.mark.parametrize("rho", [0.0, 0.7])
def test_plane_fold_curve_solves_F_and_Fy(get_views, rho):
    """Every fold point drawn is a double root of (6): F = F_y = 0 at y = 2Tq, with
    a_eff = a - rho; the band is H(a_eff); the cusp sits at 2 gamma T + rho."""
    gamma, T = 0.8, 1.3
    d = get_views(a=4.0, gamma=gamma, T=T, h=0.2, strength=rho)
    pl = d["views"]["plane"]
    assert pl["cusp"]["a"] == pytest.approx(2 * gamma * T + rho, rel=1e-14)
    assert len(pl["fold"]) == 2
    for br in pl["fold"]:
        a_user, h, y = (np.array(br[k]) for k in ("a", "h", "y"))
        assert len(a_user) >= 250
        for ai, hi, yi in zip(a_user[::25], h[::25], y[::25], strict=True):
            p = RouterParams(a=ai - rho, gamma=gamma, T=T, h=hi)
            scale = ai + abs(hi) + gamma * abs(yi)
            assert abs(float(moebif.drift(yi, p))) <= 1e-12 * scale
            assert abs(float(moebif.drift_dy(yi, p))) <= 1e-12 * (ai / T + gamma)
    band = pl["bistable_band"]
    a_eff = np.array(band["a"]) - rho
    H = np.where(
        a_eff > 2 * gamma * T, moebif.hysteresis_halfwidth(np.maximum(a_eff, 0), gamma, T), 0
    )
    np.testing.assert_allclose(band["H"], H, rtol=1e-12, atol=1e-14)


def test_plane_zoom_recomputes_inside_the_window(get_views):
    """A zoomed window gets the full resolution inside it, not a stretched coarse curve."""
    d = get_views(a=3.0, plane_a="2.0,2.2", plane_h="-0.01,0.01")
    pl = d["views"]["plane"]
    assert pl["range"] == {"a": [2.0, 2.2], "h": [-0.01, 0.01]}
    for br in pl["fold"]:
        a = np.array(br["a"])
        inside = (a >= 2.0) & (a <= 2.2)
        assert inside.sum() >= 250


@pytest.mark.parametrize("against", ["h", "a"])
@pytest.mark.parametrize("a,h", [(3.0, 0.0), (3.0, 0.3), (1.2, -0.4)])
def test_bifurcation_branches_are_equilibria_with_their_stability(get_views, against, a, h):
    gamma, T = 1.0, 0.9
    d = get_views(a=a, gamma=gamma, T=T, h=h, bif_against=against)
    bf = d["views"]["bifurcation"]
    assert bf["segments"]
    crossings = 0
    x_now = h if against == "h" else a
    for s in bf["segments"]:
        x, u, y = (np.array(s[k]) for k in ("x", "u", "y"))
        for xi, yi in zip(x[1:], y[1:], strict=True):  # [0] is shared with the previous run
            kw = {"a": a, "h": h, against: xi}
            p = RouterParams(gamma=gamma, T=T, **kw)
            assert abs(float(moebif.drift(yi, p))) <= 1e-11 * (abs(xi) + a + gamma * abs(yi) + 1)
            fy = float(moebif.drift_dy(yi, p))
            if abs(fy) > 1e-9:
                assert (fy < 0) == s["stable"]
        np.testing.assert_allclose(u, np.tanh(y / (2 * T)), rtol=1e-15, atol=1e-15)
        crossings += int(np.sum(np.diff(np.sign(x - x_now)) != 0))
    # the curve crosses the current parameter once per equilibrium
    assert crossings == len(bf["current"]["equilibria"])


@pytest.mark.parametrize("N", [2, 3, 8, 40])
def test_branches_top1_against_the_library(get_views, N):
    gamma, T = 1.0, 1.0
    a = 0.6 * N
    d = get_views(a=a, gamma=gamma, T=T, N=N, k=1)
    br = d["views"]["branches"]
    assert br["linear_threshold"] == pytest.approx(N, rel=1e-14)
    assert br["collapse_threshold"] == pytest.approx(
        symmetric.collapse_threshold(N, gamma, T) / (gamma * T), rel=1e-12
    )
    pn = RouterParams(a=a, gamma=gamma, T=T, n_experts=N)
    assert br["current"]["regime"] == moebif.regime(pn) == d["regime"]["n"]
    want = [e.to_dict() for e in symmetric.symmetric_equilibria(pn)]
    got = [
        {k: e[k] for k in ("winners", "gap", "max_load", "eigenvalue", "stable")}
        for e in br["current"]["equilibria"]
    ]
    assert got == want
    if N >= 3:
        assert br["metastable_window"] == [br["collapse_threshold"], br["linear_threshold"]]
    else:
        assert br["metastable_window"] is None
    for b in br["branches"]:
        for s in b["segments"]:
            x, d_ = np.array(s["x"]), np.array(s["y"])
            np.testing.assert_allclose(x, symmetric.branch_ratio(d_, N, b["winners"]), rtol=1e-12)


def test_branches_topk_thresholds_and_regime(get_views):
    N, k, gamma, T = 6, 2, 1.0, 1.0
    a_sn, _ = topk.topk_collapse_threshold(N, k, gamma, T)
    a_lin = topk.topk_linear_threshold(N, k, gamma, T)
    for a in (0.9 * a_sn, 0.5 * (a_sn + a_lin), 1.1 * a_lin):
        d = get_views(a=a, N=N, k=k, views="branches")
        br = d["views"]["branches"]
        assert br["collapse_threshold"] == pytest.approx(a_sn, rel=1e-12)
        assert br["linear_threshold"] == pytest.approx(a_lin, rel=1e-12)
        p = RouterParams(a=a, gamma=gamma, T=T, n_experts=N)
        assert d["regime"]["n"] == moebif.regime(p, k)
        stable_collapsed = [e for e in br["current"]["equilibria"] if e["winners"] and e["stable"]]
        assert bool(stable_collapsed) == (a >= a_sn)  # the branch samples cross where they should


def test_branches_zoom_resamples_the_window(get_views):
    d = get_views(a=3.0, N=8, br_x="4.2,4.4", br_load="0.3,0.8")
    (b1,) = [b for b in d["views"]["branches"]["branches"] if b["winners"] == 1]
    x = np.concatenate([s["x"] for s in b1["segments"]])
    assert ((x >= 4.2) & (x <= 4.4)).sum() >= 300


def test_meanfield_is_solve_meanfield(get_views):
    d = get_views(a=3.0, h=0.08, y0=-0.4, t_range="0,7")
    mf = d["views"]["meanfield"]
    t = np.array(mf["t"])
    assert t[0] == 0 and t[-1] == 7
    p = RouterParams(a=3.0, gamma=1.0, T=1.0, h=0.08)
    np.testing.assert_array_equal(mf["u"], moebif.solve_meanfield(p, t, y0=-0.4))
    # and with the feedback balancer: the library's own rho path (a_eff = a - rho)
    d = get_views(a=3.0, h=0.08, y0=-0.4, t_range="0,7", strength=0.6)
    want = moebif.solve_meanfield(p, t, y0=-0.4, rho=0.6)
    np.testing.assert_allclose(d["views"]["meanfield"]["u"], want, rtol=1e-9, atol=1e-12)


def test_feedback_balancer_moves_every_view_by_rho(get_views):
    a, rho = 3.5, 1.2
    bal = get_views(a=a, h=0.1, strength=rho, N=8)
    ref = get_views(a=a - rho, h=0.1, strength=0, N=8)
    assert bal["views"]["state"]["equilibria"] == ref["views"]["state"]["equilibria"]
    assert bal["regime"] == ref["regime"]
    assert bal["point"]["a_eff"] == a - rho
    b, r = bal["views"]["branches"], ref["views"]["branches"]
    assert b["linear_threshold"] == pytest.approx(r["linear_threshold"] + rho, rel=1e-12)
    assert b["collapse_threshold"] == pytest.approx(r["collapse_threshold"] + rho, rel=1e-12)
    assert b["current"]["x"] == pytest.approx(a, rel=1e-12)
    assert "rho = 1.2" in bal["command"]


def test_copy_as_command_gives_the_same_theory(client, get_views):
    from moebif.cli import main

    for q in ({"a": 3.0, "h": 0.05}, {"a": 2.7, "strength": 0.4, "N": 4}, {"a": 5, "N": 8, "k": 2}):
        d = get_views(**q)
        lines = [line.split("  #")[0] for line in d["command"].splitlines()]
        assert len(lines) == (2 if q.get("N", 8) > 2 else 1)
        outs = []
        for line in lines:
            argv = shlex.split(line)
            assert argv[0] == "moebif" and argv[-1] == "--json"
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert main(argv[1:]) == 0
            outs.append(json.loads(buf.getvalue()))
        two = outs[0]
        eqs = [
            {k: e[k] for k in ("y", "u", "stable", "eigenvalue")}
            for e in d["views"]["state"]["equilibria"]
        ]
        assert two["equilibria"] == eqs and two["regime"] == d["regime"]["two"]
        assert outs[1]["regime"] == d["regime"]["n"]
        assert outs[1]["collapse_a"] == pytest.approx(
            d["views"]["branches"]["collapse_threshold"] - q.get("strength", 0), rel=1e-12
        )


@pytest.mark.parametrize("view", ["state", "plane", "bifurcation", "branches", "meanfield"])
def test_export_csv_and_json_hold_the_view(client, get_views, view):
    q = {"a": 3.0, "h": 0.05, "N": 4}
    d = get_views(**q)["views"][view]
    r = client.get("/api/export", params={**q, "view": view, "format": "json"})
    assert r.status_code == 200
    assert f"moebif-explore-{view}.json" in r.headers["content-disposition"]
    j = r.json()
    assert j["view"] == view and j["point"]["a"] == 3.0
    assert j["data"] == d
    r = client.get("/api/export", params={**q, "view": view, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and all(row["table"] for row in rows)
    if view == "state":
        curve = [row for row in rows if row["table"] == "curve"]
        assert [float(x["F"]) for x in curve] == d["F"]  # full precision
        assert len([row for row in rows if row["table"] == "equilibria"]) == len(d["equilibria"])
    if view == "meanfield":
        assert [float(x["u"]) for x in rows] == d["u"]


def test_binary_encoding_keeps_every_bit(client, get_views):
    import base64

    q = {"a": 3.0, "h": 0.05, "views": "state"}
    plain = get_views(**q)["views"]["state"]
    r = client.get("/api/views", params={**q, "encoding": "binary"})
    enc = r.json()["views"]["state"]
    assert enc["F"]["dtype"] == "f8"
    F = np.frombuffer(base64.b64decode(enc["F"]["bdata"]), dtype="<f8")
    assert np.array_equal(F, plain["F"])


BAD = [
    ({"T": "0"}, "T", "T: must be > 0"),
    ({"gamma": "-1"}, "gamma", "gamma: must be > 0"),
    ({"a": "nan"}, "a", "a: must be finite"),
    ({"a": "abc"}, "a", "a: must be a number"),
    ({"a": "-1"}, "a", "a: must be >= 0"),
    ({"h": "inf"}, "h", "h: must be finite"),
    ({"N": "1"}, "N", "N: must be an integer >= 2"),
    ({"N": "2.5"}, "N", "N: must be an integer"),
    ({"N": "8", "k": "8"}, "k", "k: must be an integer in 1..7"),
    ({"k": "0"}, "k", "k: must be an integer in 1..7"),
    ({"balancer": "magic"}, "balancer", "unknown scheme 'magic'"),
    ({"strength": "-0.5"}, "strength", "strength: must be >= 0"),
    ({"a": "1", "strength": "2"}, "rho", "rho: must be <= a"),
    ({"views": "state,phase"}, "views", "unknown view 'phase'"),
    ({"y_range": "2,1"}, "y_range", "lo < hi"),
    ({"plane_a": "1"}, "plane_a", "two numbers"),
    ({"bif_against": "T"}, "against", "must be 'h' or 'a'"),
    ({"t_range": "-5,-1"}, "t_range", "t_range"),
    ({"colour": "red"}, "colour", "unknown parameter 'colour'"),
    ({"encoding": "xml"}, "encoding", "encoding: must be json or binary"),
]


@pytest.mark.parametrize("q,param,msg", BAD)
def test_bad_input_is_a_400_naming_the_parameter(client, q, param, msg):
    r = client.get("/api/views", params=q)
    assert r.status_code == 400, r.text
    body = r.json()
    assert msg in body["error"] and body["param"] == param
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    "q,status,msg",
    [
        ({"view": "state", "format": "xml"}, 400, "format: must be csv or json"),
        ({"view": "nope"}, 400, "view: must be one of"),
        ({"view": "state", "T": "0"}, 400, "T: must be > 0"),
        ({"view": "trajectory", "job": "t999"}, 404, "no such trajectory"),
        ({"view": "monitor"}, 404, "no monitor log"),
    ],
)
def test_bad_export_requests(client, q, status, msg):
    r = client.get("/api/export", params=q)
    assert r.status_code == status and msg in r.json()["error"]


KEYS = ["a", "gamma", "T", "h", "N", "k", "strength", "y0", "balancer", "y_range", "br_x", "views"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    q=st.dictionaries(
        st.sampled_from(KEYS),
        st.one_of(
            st.text(max_size=8),
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.integers(-5, 300).map(str),
            st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)).map(lambda t: f"{t[0]},{t[1]}"),
        ),
        max_size=4,
    )
)
def test_no_input_gives_a_500(client, q):
    r = client.get("/api/views", params=q)
    assert r.status_code in (200, 400), (q, r.text)
    if r.status_code == 400:
        assert r.json()["error"]


def test_pages_and_assets_are_local(client):
    import plotly

    from moebif.explore.server import STATIC

    r = client.get("/")
    assert r.status_code == 200 and "moebif explore" in r.text
    for name in ("index.html", "explore.js", "explore.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "//cdn" not in text
    r = client.get("/static/plotly.min.js")
    path = __import__("pathlib").Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert r.status_code == 200 and r.content == path.read_bytes()
    assert client.get("/static/../server.py").status_code == 404
    assert client.get("/static/nope.js").status_code == 404
    assert client.get("/api/nothing").status_code == 404


def test_only_loopback_host_headers(client):
    r = client.get("/api/meta", headers={"host": "attacker.example:8765"})
    assert r.status_code == 400
    assert client.get("/api/meta", headers={"host": "localhost:8765"}).status_code == 200


def test_meta_lists_the_balancer_registry(client):
    from moebif.explore import BALANCERS

    m = client.get("/api/meta").json()
    assert [b["name"] for b in m["balancers"]] == list(BALANCERS)
    assert m["monitor"] is None


def test_a_registered_balancer_moves_the_views(client, get_views):
    """Adding a scheme is one register() call: the views follow its effective router."""
    from moebif.explore import BALANCERS, Balancer, register

    register(
        Balancer(
            name="test-forgetting",
            label="extra forgetting",
            strength_label="delta gamma",
            strength_max=2.0,
            effective=lambda p, s: p.replace(gamma=p.gamma + s),
            user_a=lambda a_eff, p, s: a_eff,
        )
    )
    try:
        d = get_views(a=3.0, balancer="test-forgetting", strength=0.5)
        p = RouterParams(a=3.0, gamma=1.5, T=1.0)
        eqs = [
            {k: e[k] for k in ("y", "u", "stable", "eigenvalue")}
            for e in d["views"]["state"]["equilibria"]
        ]
        assert eqs == [e.to_dict() for e in moebif.equilibria(p)]
        assert d["views"]["plane"]["cusp"]["a"] == pytest.approx(3.0)
        r = client.post(
            "/api/trajectories",
            params={"a": 3.0, "balancer": "test-forgetting", "strength": 0.5},
            headers={"x-moebif": "1"},
        )
        assert (
            r.status_code == 400 and "not implemented in the stochastic router" in r.json()["error"]
        )
    finally:
        del BALANCERS["test-forgetting"]


def test_regime_labels_across_the_pitchfork(get_views):
    """a across 2 gamma T at h = 0: one equilibrium (balanced) -> three (bistable)."""
    gamma, T = 0.7, 1.4
    below = get_views(a=0.99 * 2 * gamma * T, gamma=gamma, T=T, views="state")
    above = get_views(a=1.01 * 2 * gamma * T, gamma=gamma, T=T, views="state")
    assert (below["n_equilibria"], below["regime"]["two"]) == (1, "balanced")
    assert (above["n_equilibria"], above["regime"]["two"]) == (3, "bistable")
    assert math.isclose(above["views"]["state"]["equilibria"][1]["y"], 0.0, abs_tol=1e-12)


@pytest.mark.parametrize(
    "a,gamma,T,strength",
    [(3.0, 1.0, 1.0, 0.0), (3.5, 1.0, 1.0, 1.2), (1.5, 1.0, 1.0, 0.0), (12.0, 0.5, 1.0, 0.0)],
)
def test_h_slider_spans_the_bistable_window(get_views, a, gamma, T, strength):
    """The h slider's ends are 1.5 H(a_eff) (at least 0.5, at most the global 3) and its step
    resolves the window: the fold points +-H are inside, 2000 steps or more across."""
    d = get_views(a=a, gamma=gamma, T=T, h=0.0, strength=strength, N=8)
    lo, hi, step = d["sliders"]["h"]
    H = moebif.hysteresis_halfwidth(a - strength, gamma, T)
    w = min(max(1.5 * H, 0.5), 3.0)
    assert lo == -hi and w - 1e-12 <= hi <= w + step  # the end on the step grid
    assert hi >= min(H, 3.0) and (hi - lo) / step >= 2000 and step <= 1e-3
