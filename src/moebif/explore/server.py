"""The explorer's web server: a Starlette app on uvicorn, bound to the loopback only.

The page (``static/``) draws with plotly.js, served from the installed ``plotly`` package: nothing
is fetched from the network. It holds no theory: every number it draws comes from the JSON API
below, which calls the library through :mod:`moebif.explore.views`.

API (all ``GET`` unless said; parameters in the query string):

- ``/api/meta``: version, balancers, defaults, slider ranges, the loaded monitor log.
- ``/api/views``: the theory views at a point (``a, gamma, T, h, balancer, strength, N, k,
  y0``; view windows ``y_range, plane_a, plane_h, bif_x, bif_u, br_x, br_load, t_range`` as
  ``lo,hi``; ``bif_against=h|a``; ``views``: a comma list of ``state, plane, bifurcation,
  branches, meanfield``; ``encoding=binary``: float arrays as base64 doubles), the regime
  labels, the number of equilibria and the equivalent ``moebif theory`` command.
- ``/api/export?view=NAME&format=csv|json`` (+ the point): one view's data as a file
  (``view=trajectory&job=ID`` and ``view=monitor`` too).
- ``POST /api/trajectories`` (point + ``batch, eta, steps, runs, seed``): start a job (202);
  ``/api/trajectories/ID``: its state, progress and result; ``POST .../ID/cancel``.
- ``/api/monitor``: the training view of the monitor log; ``POST /api/monitor?name=FILE``
  with the file as the body: load another one.

Bad input gets a 400 (404 for an unknown job or log) with ``{"error": "...", "param": "..."}``; the
page shows the message. Every input is bounded by what it costs (docs/explore.md, "Limits"), a view
whose client disconnects is abandoned, and a stop (SIGTERM, Ctrl+C) does not wait for it. POST
requests need the header ``X-Moebif: 1`` (a page of another origin cannot send it without a CORS
preflight, which this server does not grant), and the ``Host`` header must be the loopback (no DNS
rebinding).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from .._version import __version__
from ..monitor import LogError
from ..params import ParameterError, RouterParams
from . import views as V
from .balancers import BALANCERS, get_balancer
from .jobs import LIMITS, JobRunner, check_settings
from .logs import MonitorLog, read_monitor_log

__all__ = ["DEFAULT_PORT", "PortError", "bind_loopback", "create_app", "running_server", "serve"]

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 256 * 2**20
# the monitor runs at ~15-30 us a logged step and layer: an uploaded log is a few seconds at most
MAX_UPLOAD_ROWS = 200_000

DEFAULTS = {
    "a": 3.0,
    "gamma": 1.0,
    "T": 1.0,
    "h": 0.0,
    "balancer": "feedback",
    "strength": 0.0,
    "N": 8,
    "k": 1,
    "y0": 0.5,
    "batch": 512,
    "eta": 0.002,
    "steps": 5000,
    "runs": 20,
    "seed": 0,
}
SLIDERS = {  # slider ends and steps (numbers typed in the boxes may go beyond)
    "a": [0.0, 10.0, 0.01],
    "gamma": [0.05, 5.0, 0.01],
    "T": [0.05, 5.0, 0.01],
    "h": [-3.0, 3.0, 0.005],
    "N": [2, 64, 1],
    "k": [1, 8, 1],
}
VIEW_NAMES = ("state", "plane", "bifurcation", "branches", "meanfield")
POINT_KEYS = ("a", "gamma", "T", "h", "balancer", "strength", "N", "k", "y0")
WINDOW_KEYS = (
    "y_range",
    "plane_a",
    "plane_h",
    "bif_against",
    "bif_x",
    "bif_u",
    "br_x",
    "br_load",
    "t_range",
)
SIM_KEYS = ("batch", "eta", "steps", "runs", "seed")


_CANCEL = V.CANCEL
# True once the client of the request being computed in this thread has gone away, or the server
# is stopping: the long views check it between chunks (views.check_cancelled)
cancelled = V.cancelled


class BadRequest(Exception):
    """Bad input from the page or a client: 400 with the message (and the parameter)."""

    def __init__(self, param: str | None, message: str, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


class PortError(OSError):
    """The requested port cannot be bound on the loopback."""


# ----------------------------------------------------------------------------------------------
# query parsing


def _float(q, name: str) -> float:
    raw = q.get(name)
    if raw is None or raw == "":
        return float(DEFAULTS[name])
    try:
        x = float(raw)
    except ValueError:
        raise BadRequest(name, f"{name}: must be a number, got {raw!r}") from None
    if not math.isfinite(x):
        raise BadRequest(name, f"{name}: must be finite, got {raw!r}")
    return x


Y0_MAX = 1e6  # the scores' equilibria lie within (a + |h|) / gamma; far beyond, the ODE overflows


def _y0(q) -> float:
    y0 = _float(q, "y0")
    if abs(y0) > Y0_MAX:
        raise BadRequest("y0", f"y0: must be within +-{Y0_MAX:g}, got {q.get('y0')!r}")
    return y0


def _int(q, name: str) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return int(DEFAULTS[name])
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(name, f"{name}: must be an integer, got {raw!r}") from None


def _pair(q, name: str):
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    parts = raw.split(",")
    try:
        lo, hi = (float(x) for x in parts)
    except ValueError:
        raise BadRequest(name, f"{name}: must be two numbers 'lo,hi', got {raw!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise BadRequest(name, f"{name}: must be finite with lo < hi, got {raw!r}")
    return lo, hi


def _check_known(q, allowed) -> None:
    for key in q.keys():
        if key not in allowed:
            raise BadRequest(key, f"unknown parameter {key!r} (known: {', '.join(allowed)})")


# the library names its fields; the page names its sliders
_PARAM_OF = {"n_experts": "N", "top_k": "k", "strength": "strength"}


def _point(q) -> V.Point:
    try:
        bal = get_balancer(q.get("balancer") or DEFAULTS["balancer"])
        strength = bal.check_strength(_float(q, "strength"))
        params = RouterParams(
            a=_float(q, "a"), gamma=_float(q, "gamma"), T=_float(q, "T"), h=_float(q, "h")
        )
        return V.Point(
            params=params,
            balancer=bal,
            strength=strength,
            n_experts=_int(q, "N"),
            top_k=_int(q, "k"),
            y0=_y0(q),
        )
    except ParameterError as e:
        raise BadRequest(_PARAM_OF.get(e.name, e.name), _message(e)) from None


def _message(e: ParameterError) -> str:
    name = _PARAM_OF.get(e.name, e.name)
    return f"{name}: {str(e).split(': ', 1)[1]}" if ": " in str(e) else str(e)


def compute_views(q, names=VIEW_NAMES) -> dict:
    """The ``/api/views`` object (also used by the exports and the tests)."""
    pt = _point(q)
    against = q.get("bif_against") or "h"
    out: dict = {}
    try:
        for name in names:
            if name == "state":
                out[name] = V.state_view(pt, y_range=_pair(q, "y_range"))
            elif name == "plane":
                out[name] = V.plane_view(
                    pt, a_range=_pair(q, "plane_a"), h_range=_pair(q, "plane_h")
                )
            elif name == "bifurcation":
                out[name] = V.bifurcation_view(
                    pt, against=against, x_range=_pair(q, "bif_x"), u_range=_pair(q, "bif_u")
                )
            elif name == "branches":
                out[name] = V.branches_view(
                    pt, x_range=_pair(q, "br_x"), load_range=_pair(q, "br_load")
                )
            elif name == "meanfield":
                t_default = (0.0, min(10.0, V.meanfield_t_max(pt.effective)))
                out[name] = V.meanfield_view(pt, t_range=_pair(q, "t_range") or t_default)
            else:
                raise BadRequest("views", f"views: unknown view {name!r}")
    except ParameterError as e:
        raise BadRequest(_PARAM_OF.get(e.name, e.name), _message(e)) from None
    eqs = V.th.equilibria(pt.effective)
    return {
        "point": {
            **pt.params.to_dict(),
            "balancer": pt.balancer.name,
            "strength": pt.strength,
            "N": pt.n_experts,
            "k": pt.top_k,
            "y0": pt.y0,
            "a_eff": pt.effective.a,
        },
        "regime": {"two": V.regime(pt.effective), "n": V.n_regime(pt)},
        "n_equilibria": len(eqs),
        "sliders": {"h": V.h_slider(pt.effective, limit=SLIDERS["h"][1])},
        "command": V.theory_command(pt),
        "views": out,
    }


# ----------------------------------------------------------------------------------------------
# export


def _tables(view: str, data: dict) -> list[tuple[str, dict]]:
    """A view's data as named tables of equal-length columns (for CSV)."""
    t: list[tuple[str, dict]] = []
    if view == "state":
        t.append(("curve", {"y": data["y"], "F": data["F"], "V": data["V"]}))
        t.append(("equilibria", _records(data["equilibria"])))
    elif view == "plane":
        for i, br in enumerate(data["fold"]):
            t.append((f"fold_{'upper' if i == 0 else 'lower'}", br))
        t.append(("bistable_band", data["bistable_band"]))
        t.append(("cusp", {k: [v] for k, v in data["cusp"].items()}))
        t.append(("point", {k: [v] for k, v in data["point"].items()}))
    elif view == "bifurcation":
        for i, s in enumerate(data["segments"]):
            st = "stable" if s["stable"] else "unstable"
            t.append((f"segment_{i}_{st}", {data["against"]: s["x"], "u": s["u"], "y": s["y"]}))
        t.append(("current_equilibria", _records(data["current"]["equilibria"])))
    elif view == "branches":
        for br in data["branches"]:
            for i, s in enumerate(br["segments"]):
                st = "stable" if s["stable"] else "unstable"
                t.append(
                    (
                        f"m{br['winners']}_segment_{i}_{st}",
                        {"a_over_gammaT": s["x"], "max_load": s["u"], "gap": s["y"]},
                    )
                )
        t.append(("current_equilibria", _records(data["current"]["equilibria"])))
    elif view == "meanfield":
        t.append(("meanfield", {"t": data["t"], "u": data["u"]}))
    elif view == "trajectory":
        cols = {k: data[k] for k in ("t", "u_mean", "u_std", "u_meanfield")}
        for i, run in enumerate(data["u_runs"]):
            cols[f"u_run_{i}"] = run
        t.append(("trajectory", cols))
    elif view == "monitor":
        for layer in data["layers"]:
            t.append((f"{layer['name']}_fits", _records(layer["fits"])))
            t.append((f"{layer['name']}_alarms", _records(layer["alarms"])))
    return t


def _records(rows: list[dict]) -> dict:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return {k: [r.get(k) for r in rows] for k in keys}


def _to_csv(tables) -> str:
    """Long CSV: a ``table`` column, then the union of the columns (blank where absent)."""
    import csv

    cols: list[str] = []
    for _, tab in tables:
        cols += [c for c in tab if c not in cols]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", *cols])
    for name, tab in tables:
        tab = _plain(tab)
        n = max((len(v) for v in tab.values()), default=0)
        for i in range(n):
            row = [name]
            for c in cols:
                v = tab.get(c)
                x = v[i] if v is not None and i < len(v) else ""
                row.append("" if x is None else (repr(x) if isinstance(x, float) else x))
            w.writerow(row)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# the app


def _plain(x, binary: bool = False):
    """JSON-ready copy: arrays to lists (non-finite floats to None: JSON has no NaN), numpy
    scalars to Python ones, dataclasses and RouterParams to dicts. ``binary``: float arrays of
    more than 16 values as ``{"dtype": "f8", "bdata": base64 of the little-endian doubles}``
    (plotly.js's typed-array form; the page decodes it), which keeps every bit and is ~20x
    faster to write than decimal text."""
    import base64
    import dataclasses

    import numpy as np

    if isinstance(x, dict):
        return {str(k): _plain(v, binary) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v, binary) for v in x]
    if isinstance(x, np.ndarray):
        if binary and x.dtype.kind == "f" and x.ndim == 1 and x.size > 16:
            data = np.ascontiguousarray(x, dtype="<f8").tobytes()
            return {"dtype": "f8", "bdata": base64.b64encode(data).decode("ascii")}
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            return _plain(x.astype(object).tolist())
        return x.tolist()
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, RouterParams):
        return x.to_dict()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _plain(dataclasses.asdict(x))
    return x


def _json_dumps(obj, binary: bool = False) -> bytes:
    return json.dumps(_plain(obj, binary), allow_nan=False, separators=(",", ":")).encode()


def create_app(*, monitor: MonitorLog | None = None, warm_up: bool = True):
    """The Starlette app. ``monitor``: a log read by :func:`read_monitor_log` (or None);
    ``warm_up``: compile the simulator kernels in the background at start-up."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    state = {"monitor": monitor, "runner": None}
    inflight: set[threading.Event] = set()  # the cancel flags of the requests computing now

    def jresp(obj, status=200, headers=None, binary=False):
        return Response(
            _json_dumps(obj, binary),
            status_code=status,
            media_type="application/json",
            headers=headers,
        )

    def endpoint(fn):
        def wrapped(request: Request):
            try:
                return fn(request)
            except V.Cancelled:  # the client left or the server stops: nobody to answer
                return Response(status_code=499)
            except BadRequest as e:
                return jresp({"error": str(e), "param": e.param}, status=e.status)
            except (ParameterError, LogError) as e:
                name = getattr(e, "name", None)
                return jresp({"error": str(e), "param": name}, status=400)
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                return jresp({"error": f"internal error: {type(e).__name__}: {e}"}, status=500)

        return wrapped

    async def off_loop(request: Request, fn, *args):
        """``fn(*args)`` in a worker thread, abandoned (and its cancel flag set) as soon as the
        client disconnects or the server stops, so a closed tab or a killed script leaves no
        work behind in the event loop and a shutdown does not wait for it; the long views stop
        at their next chunk (:func:`moebif.explore.views.check_cancelled`)."""
        import anyio

        stop = threading.Event()
        box: dict = {}
        inflight.add(stop)

        def call():
            token = _CANCEL.set(stop)
            try:
                return fn(*args)
            finally:
                _CANCEL.reset(token)

        try:
            async with anyio.create_task_group() as tg:

                async def watch():
                    while (await request.receive())["type"] != "http.disconnect":
                        pass
                    stop.set()
                    tg.cancel_scope.cancel()

                async def work():
                    box["response"] = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                tg.start_soon(work)
        finally:
            # also when this task is cancelled (the server stops): the thread's computation
            # stops at its next chunk instead of running on to an answer nobody reads
            stop.set()
            inflight.discard(stop)
        # None: the client left; the server answers nobody
        return box.get("response") or Response(status_code=499)

    def computed(fn):
        """A heavy GET endpoint, computed by :func:`off_loop`."""
        sync = endpoint(fn)

        async def wrapped(request: Request):
            return await off_loop(request, sync, request)

        return wrapped

    def guard_post(request: Request):
        if request.headers.get("x-moebif") != "1":
            raise BadRequest(None, "POST requests need the header X-Moebif: 1", status=403)

    def runner() -> JobRunner:
        if state["runner"] is None:
            state["runner"] = JobRunner()
            if warm_up:
                state["runner"].warm_up()
        return state["runner"]

    # ------------------------------------------------------------------ pages and assets
    def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    assets = {"explore.js": "text/javascript", "explore.css": "text/css"}

    def static(request):
        name = request.path_params["name"]
        if name == "plotly.min.js":
            import plotly

            path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
            return FileResponse(
                path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"}
            )
        if name not in assets:
            return JSONResponse({"error": f"no such asset {name!r}"}, status_code=404)
        return FileResponse(
            STATIC / name, media_type=assets[name], headers={"Cache-Control": "no-cache"}
        )

    # ------------------------------------------------------------------ API
    @endpoint
    def meta(request):
        mon = state["monitor"]
        return jresp(
            {
                "version": __version__,
                "balancers": [b.to_dict() for b in BALANCERS.values()],
                "defaults": DEFAULTS,
                "sliders": SLIDERS,
                "views": list(VIEW_NAMES),
                "limits": {"meanfield_work": V.MEANFIELD_WORK, **LIMITS},
                "monitor": None
                if mon is None
                else {
                    "source": mon.source,
                    "layers": [
                        {"name": x.name, "N": x.n_experts, "k": x.top_k} for x in mon.layers
                    ],
                },
                "simulator_ready": runner().warm.is_set(),
            }
        )

    @computed
    def views(request):
        q = request.query_params
        _check_known(q, (*POINT_KEYS, *WINDOW_KEYS, "views", "encoding"))
        encoding = q.get("encoding") or "json"
        if encoding not in ("json", "binary"):
            raise BadRequest("encoding", f"encoding: must be json or binary, got {encoding!r}")
        names = [x for x in (q.get("views") or ",".join(VIEW_NAMES)).split(",") if x]
        for x in names:
            if x not in VIEW_NAMES:
                raise BadRequest("views", f"views: unknown view {x!r} (known: {VIEW_NAMES})")
        t0 = time.perf_counter()
        out = compute_views(q, names)
        out["server_ms"] = 1e3 * (time.perf_counter() - t0)
        return jresp(out, binary=encoding == "binary")

    @computed
    def export(request):
        q = request.query_params
        view = q.get("view")
        fmt = q.get("format") or "csv"
        if fmt not in ("csv", "json"):
            raise BadRequest("format", f"format: must be csv or json, got {fmt!r}")
        if view == "trajectory":
            _check_known(q, ("view", "format", "job"))
            job = runner().get(q.get("job") or "")
            if job is None:
                raise BadRequest("job", f"job: no such trajectory {q.get('job')!r}", status=404)
            if job.result is None:
                raise BadRequest("job", f"job: trajectory {job.id} has no result ({job.state})")
            data, meta = job.result, {"settings": job.settings, "point": job.point.params}
        elif view == "monitor":
            _check_known(q, ("view", "format"))
            if state["monitor"] is None:
                raise BadRequest(None, "no monitor log loaded (start with --log FILE)", 404)
            data, meta = state["monitor"].to_dict(), {}
        elif view in VIEW_NAMES:
            _check_known(q, (*POINT_KEYS, *WINDOW_KEYS, "view", "format"))
            res = compute_views(q, [view])
            data = res["views"][view]
            meta = {"point": res["point"], "command": res["command"]}
        else:
            raise BadRequest("view", f"view: must be one of {VIEW_NAMES + ('trajectory',)}")
        stem = f"moebif-explore-{view}"
        if fmt == "json":
            body = _json_dumps({"view": view, **meta, "data": data})
            media = "application/json"
        else:
            body = _to_csv(_tables(view, data)).encode()
            media = "text/csv"
        return Response(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'},
        )

    @endpoint
    def trajectories(request):
        guard_post(request)
        q = request.query_params
        _check_known(q, (*POINT_KEYS, *SIM_KEYS))
        pt = _point(q)
        try:
            settings = check_settings(
                pt,
                batch=q.get("batch") or DEFAULTS["batch"],
                eta=_float(q, "eta"),
                steps=q.get("steps") or DEFAULTS["steps"],
                runs=q.get("runs") or DEFAULTS["runs"],
                seed=q.get("seed") or DEFAULTS["seed"],
            )
        except ParameterError as e:
            raise BadRequest(_PARAM_OF.get(e.name, e.name), _message(e)) from None
        job = runner().submit(pt, settings)
        return jresp(job.status(), status=202)

    def _job(request):
        job = runner().get(request.path_params["job"])
        if job is None:
            raise BadRequest("job", f"no such trajectory {request.path_params['job']!r}", 404)
        return job

    @endpoint
    def trajectory(request):
        return jresp(
            _job(request).status(), binary=request.query_params.get("encoding") == "binary"
        )

    @endpoint
    def cancel(request):
        guard_post(request)
        job = _job(request)
        runner().cancel(job.id)
        return jresp(job.status(with_result=False))

    @endpoint
    def monitor_get(request):
        if state["monitor"] is None:
            raise BadRequest(None, "no monitor log loaded (start with --log FILE)", 404)
        return jresp(state["monitor"].to_dict())

    async def monitor_upload(request: Request):
        # read the body here (async), then parse it in a worker thread like the other endpoints
        from starlette.requests import ClientDisconnect

        try:
            guard_post(request)
            name = Path(request.query_params.get("name") or "log.csv").name
            raw = request.headers.get("content-length") or "0"
            if not raw.isdigit():
                raise BadRequest("content-length", f"bad Content-Length {raw[:40]!r}")
            if int(raw) > MAX_UPLOAD:
                raise BadRequest("log", f"log too large ({raw} bytes > {MAX_UPLOAD})", 413)
            chunks, size = [], 0
            async for chunk in request.stream():  # bounded also without a Content-Length
                size += len(chunk)
                if size > MAX_UPLOAD:
                    raise BadRequest("log", f"log too large (> {MAX_UPLOAD} bytes)", 413)
                chunks.append(chunk)
            body = b"".join(chunks)
        except BadRequest as e:
            return jresp({"error": str(e), "param": e.param}, status=e.status)
        except ClientDisconnect:  # an aborted upload: nobody to answer, nothing to log
            return Response(status_code=499)
        return await off_loop(request, _load_upload, name, body)

    def _load_upload(name: str, body: bytes):
        try:
            suffix = "".join(Path(name).suffixes[-1:]) or ".csv"
            with tempfile.TemporaryDirectory(prefix="moebif-explore-") as tmp:
                path = Path(tmp) / f"upload{suffix}"
                path.write_bytes(body)
                try:
                    # never open a file named inside an upload: a page must not probe or
                    # read the server's disk (the router log of a diagnose JSON is left out)
                    log = read_monitor_log(path, follow_log=False, max_rows=MAX_UPLOAD_ROWS)
                except LogError as e:
                    msg = str(e).replace(str(path), name)
                    return jresp({"error": f"log: {msg}", "param": "log"}, status=400)
            log.source = name
            state["monitor"] = log
            return jresp(log.to_dict())
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            return jresp({"error": f"internal error: {type(e).__name__}: {e}"}, status=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        runner()
        if warm_up:
            # import scipy and fill the caches of the default views before the first page asks
            from starlette.datastructures import QueryParams

            threading.Thread(
                target=lambda: compute_views(QueryParams("")),
                name="moebif-explore-warm",
                daemon=True,
            ).start()
        try:
            yield
        finally:
            for stop in list(inflight):  # computations still running stop at their next chunk
                stop.set()
            if state["runner"] is not None:
                # a server that is told to stop stops now (the CLI exits without waiting for
                # the warm-up compilation)
                state["runner"].shutdown(wait=False)

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/meta", meta),
        Route("/api/views", views),
        Route("/api/export", export),
        Route("/api/trajectories", trajectories, methods=["POST"]),
        Route("/api/trajectories/{job}", trajectory),
        Route("/api/trajectories/{job}/cancel", cancel, methods=["POST"]),
        Route("/api/monitor", monitor_get, methods=["GET"]),
        Route("/api/monitor", monitor_upload, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"]),
        ],
    )
    app.state.explore = state  # the tests read the job runner from here

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        return jresp(
            {"error": f"{request.url.path}: {getattr(exc, 'detail', 'not found')}"}, status
        )

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_found)
    return app


# ----------------------------------------------------------------------------------------------
# serving


def bind_loopback(port: int | None) -> socket.socket:
    """A listening socket on 127.0.0.1. ``port=None``: :data:`DEFAULT_PORT` if free, else any
    free port; ``0``: any free port; otherwise exactly ``port`` (:class:`PortError` if taken)."""
    if port is not None and not 0 <= port <= 65535:
        raise PortError(f"must be in 0..65535, got {port}")
    tries = [DEFAULT_PORT, 0] if port is None else [port]
    last = None
    for p in tries:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, p))
            sock.listen(128)
            sock.set_inheritable(True)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise PortError(f"cannot listen on {HOST}:{tries[-1]}: {last.strerror or last}")


def _server(app, sock):
    import uvicorn

    # on SIGTERM or Ctrl+C, requests still computing get 1 s, then are cancelled (their threads
    # abandoned): the server stops promptly
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1
    )
    return uvicorn.Server(config)


def serve(*, port: int | None = None, monitor: MonitorLog | None = None, out=None) -> None:
    """Serve the explorer on the loopback until interrupted; prints the URL first."""
    sock = bind_loopback(port)
    url = f"http://{HOST}:{sock.getsockname()[1]}/"
    out = out or sys.stdout
    print(f"moebif explore: {url}  (loopback only; Ctrl+C to stop)", file=out, flush=True)
    server = _server(create_app(monitor=monitor), sock)
    server.run(sockets=[sock])


@contextlib.contextmanager
def running_server(app=None, *, port: int = 0, monitor: MonitorLog | None = None):
    """Run the explorer in a background thread (tests, benchmarks, notebooks); yields its URL.
    The app is at ``running_server.app`` of the yielded URL's owner: use ``app=create_app()``
    to keep a handle on it."""
    app = app or create_app(monitor=monitor)
    sock = bind_loopback(port)
    server = _server(app, sock)
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 30.0
    while not server.started:
        if not th.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the explorer server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{HOST}:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        th.join(timeout=30.0)
        sock.close()
