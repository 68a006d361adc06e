"""Commands ``moebif simulate`` and ``moebif hysteresis`` (registered on the app of cli.py)."""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..model.schemes import SCHEMES
from ._common import CLIError, app, emit_json, finite, router_params

_BIG_RUN = 2_000_000  # replica-steps above which a progress bar is worth showing


@contextlib.contextmanager
def _progress_bar(label: str, enabled: bool):
    """Yields a ``progress(done, total)`` callback drawing a rich bar on a terminal, or None."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=1.0)

        def update(done, total):
            bar.update(task, completed=done / total if total else 1.0)

        yield update


def _check_common(eta: float, batch: int, runs: int, rho: float) -> None:
    finite("--eta", eta)
    if eta <= 0:
        raise CLIError("--eta", f"must be > 0, got {eta:g}")
    if batch < 1:
        raise CLIError("--batch", f"must be >= 1, got {batch}")
    if runs < 1:
        raise CLIError("--runs", f"must be >= 1, got {runs}")
    finite("--rho", rho)
    if rho < 0:
        raise CLIError("--rho", f"must be >= 0, got {rho:g}")


@app.command()
def simulate(
    a: Annotated[float, typer.Option("--a", help="Reinforcement strength a >= 0.")],
    gamma: Annotated[float, typer.Option("--gamma", help="Forgetting gamma > 0.")],
    T: Annotated[float, typer.Option("--T", help="Softmax temperature T > 0.")],
    batch: Annotated[int, typer.Option("--batch", help="Tokens a step B >= 1.")],
    eta: Annotated[float, typer.Option("--eta", help="Step size eta > 0 (t = n eta).")],
    steps: Annotated[int, typer.Option("--steps", help="Router steps S >= 1.")],
    runs: Annotated[int, typer.Option("--runs", help="Independent replicas R >= 1.")],
    h: Annotated[float, typer.Option("--h", help="External skew h = b1 - b2.")] = 0.0,
    rho: Annotated[float, typer.Option("--rho", help="Negative load feedback rho >= 0.")] = 0.0,
    experts: Annotated[int, typer.Option("--experts", help="Number of experts N >= 2.")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Random seed K >= 0.")] = 0,
    y0: Annotated[float, typer.Option("--y0", help="Initial score difference r1 - r2.")] = 0.0,
    record_every: Annotated[
        int | None, typer.Option("--record-every", help="Keep every k-th step (default S/2000).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the records to FILE (.csv, .json, .npz).")
    ] = None,
    balancer: Annotated[
        str | None,
        typer.Option(
            "--balancer",
            help="Balancing schemes, e.g. aux:1e-2,zloss:1e-3,bias:1e-3,capacity:1.25 "
            f"(names: {', '.join(SCHEMES)}; sgd, adam, lr:LR). See docs/balancing.md.",
        ),
    ] = None,
) -> None:
    """Simulate the stochastic batch router (sec. 8) against its mean-field ODE."""
    import numpy as np

    p = router_params(a, gamma, T, h, experts)
    spec = _balancer_spec(balancer)
    _check_common(eta, batch, runs, rho)
    if steps < 1:
        raise CLIError("--steps", f"must be >= 1, got {steps}")
    if seed < 0:
        raise CLIError("--seed", f"must be >= 0, got {seed}")
    finite("--y0", y0)
    if record_every is None:
        record_every = max(1, steps // 2000)
    if record_every < 1:
        raise CLIError("--record-every", f"must be >= 1, got {record_every}")
    if out is not None:
        from .._io import check_writable_file

        if out.suffix not in (".csv", ".json", ".npz"):
            raise CLIError("--out", f"file name must end in .csv, .json or .npz, got {out.name!r}")
        check_writable_file("--out", out)

    from ..model.meanfield import solve_meanfield
    from ..sim.router import simulate_batch_router

    with _progress_bar("simulating", steps * runs >= _BIG_RUN) as progress:
        sim = simulate_batch_router(
            p,
            batch=batch,
            eta=eta,
            steps=steps,
            runs=runs,
            seed=seed,
            rho=rho,
            y0=y0,
            record_every=record_every,
            progress=progress,
            balancer=spec,
        )
    terms = ()
    selected = sim.u_mean
    if spec is not None:
        from ..model.balancers import field_terms

        # the mean field of the smooth schemes (with capacity: the selection, not the served)
        terms = tuple(t for t in field_terms(spec) if t.name != "capacity")
        sel = sim.run.selected
        selected = (sel[..., 0] - sel[..., 1]).mean(axis=0) if experts == 2 else sel.mean(axis=0)
    has_mf = spec is None or spec.selection in ("softmax", "noisy")
    if not has_mf:
        u_mf = None
    elif experts == 2:
        u_mf = solve_meanfield(p, sim.t, y0, rho=rho, terms=terms)
    else:
        r0 = np.zeros(experts)
        r0[0], r0[1] = 0.5 * y0, -0.5 * y0
        u_mf = solve_meanfield(p, sim.t, r0, rho=rho, terms=terms)
    sup_error = None if u_mf is None else float(np.max(np.abs(selected - u_mf)))
    report = {
        "params": p.to_dict(),
        "batch": batch,
        "eta": eta,
        "steps": steps,
        "runs": runs,
        "seed": seed,
        "rho": rho,
        "y0": y0,
        "record_every": record_every,
        "t": sim.t.tolist(),
        "u_mean": sim.u_mean.tolist(),
        "u_std": sim.u_std.tolist(),
        "u_meanfield": None if u_mf is None else u_mf.tolist(),
        "final_u_mean": np.asarray(sim.final_u_mean).tolist(),
        "final_u_std": np.asarray(sim.final_u_std).tolist(),
        "sup_error": sup_error,
        "seconds": sim.seconds,
    }
    if spec is not None:
        run = sim.run
        report["balancer"] = {"spec": spec.label(), **spec.to_dict()}
        report["selected_mean"] = np.asarray(selected).tolist()
        report["dropped_mean"] = run.dropped.mean(axis=0).tolist()
        report["final_beta_mean"] = run.beta.mean(axis=0).tolist()
    if out is not None:
        _write_simulation(out, report, sim)
    if as_json:
        emit_json(report)
        return
    from rich.console import Console

    con = Console()
    what = "u_hat = (N1 - N2)/B" if experts == 2 else "loads N_i/B"
    con.print(
        f"batch router: a={p.a:g} gamma={p.gamma:g} T={p.T:g} h={p.h:g} rho={rho:g} "
        f"N={experts}  B={batch} eta={eta:g} steps={steps} runs={runs} seed={seed}"
    )
    fm, fs = np.asarray(sim.final_u_mean), np.asarray(sim.final_u_std)
    con.print(
        f"final {what} at t = {sim.t[-1]:g}: mean {np.array2string(fm, precision=4)}, "
        f"sd {np.array2string(fs, precision=4)}"
    )
    if spec is not None:
        con.print(
            f"balancer {spec.label()}: dropped {float(np.mean(sim.run.dropped)):.4f} of the "
            f"assignments on average"
        )
    if u_mf is None:
        con.print("mean-field: none for this selection scheme (see docs/balancing.md)")
    else:
        con.print(
            f"mean-field at t = {sim.t[-1]:g}: {np.array2string(u_mf[-1], precision=4)}   "
            f"sup_t |mean - mean-field| = {sup_error:.4f}"
        )
    # in a fresh process this includes loading (or compiling) the numba kernels, ~0.5 s
    con.print(f"{sim.seconds:.3f} s wall, including loading the compiled kernels")


def _balancer_spec(text: str | None):
    """The parsed ``--balancer`` (``None``: no balancer), or a one-line error naming it."""
    if text is None:
        return None
    from ..model.balancers import parse_balancers
    from ..params import ParameterError

    try:
        spec = parse_balancers(text)
    except ParameterError as e:
        raise CLIError("--balancer", str(e).split(": ", 1)[1]) from None
    return None if spec.is_null else spec


def _write_simulation(out: Path, report: dict, sim) -> None:
    import io
    import json

    import numpy as np

    from .._io import atomic_write_bytes, atomic_write_text

    if out.suffix == ".json":
        atomic_write_text(out, json.dumps(report, allow_nan=False) + "\n")
    elif out.suffix == ".npz":
        buf = io.BytesIO()
        mf = report["u_meanfield"]
        extra = {} if mf is None else {"u_meanfield": np.asarray(mf)}
        np.savez_compressed(buf, t=sim.t, u_hat=sim.u_hat, **extra)
        atomic_write_bytes(out, buf.getvalue())
    else:
        um, us = (np.asarray(report[k]) for k in ("u_mean", "u_std"))
        mf = (
            np.full_like(um, np.nan)
            if report["u_meanfield"] is None
            else np.asarray(report["u_meanfield"])
        )
        if um.ndim == 1:
            header = "t,u_mean,u_std,u_meanfield"
            cols = [sim.t, um, us, mf]
        else:
            n = um.shape[1]
            header = ",".join(
                ["t"]
                + [f"load{i}_mean" for i in range(n)]
                + [f"load{i}_std" for i in range(n)]
                + [f"load{i}_meanfield" for i in range(n)]
            )
            cols = [sim.t, *um.T, *us.T, *mf.T]
        rows = [header] + [",".join(repr(float(c[k])) for c in cols) for k in range(sim.t.size)]
        atomic_write_text(out, "\n".join(rows) + "\n")


@app.command()
def hysteresis(
    a: Annotated[float, typer.Option("--a", help="Reinforcement strength a >= 0.")],
    gamma: Annotated[float, typer.Option("--gamma", help="Forgetting gamma > 0.")],
    T: Annotated[float, typer.Option("--T", help="Softmax temperature T > 0.")],
    rho: Annotated[float, typer.Option("--rho", help="Negative load feedback rho >= 0.")] = 0.0,
    batch: Annotated[int, typer.Option("--batch", help="Tokens a step B >= 1.")] = 512,
    eta: Annotated[float, typer.Option("--eta", help="Step size eta > 0.")] = 0.002,
    rate: Annotated[float, typer.Option("--rate", help="Sweep rate dh/dt (ODE time).")] = 0.01,
    runs: Annotated[int, typer.Option("--runs", help="Independent replicas R >= 1.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Random seed K >= 0.")] = 0,
    extrapolate: Annotated[
        bool, typer.Option("--extrapolate", help="Also sweep at rate/2 ... rate/16; fit v -> 0.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Hysteresis loop of the batch router under a slow h sweep up and down (sec. 8.5, 8.7)."""
    p = router_params(a, gamma, T, 0.0, 2)
    _check_common(eta, batch, runs, rho)
    finite("--rate", rate)
    if rate <= 0:
        raise CLIError("--rate", f"must be > 0, got {rate:g}")
    if seed < 0:
        raise CLIError("--seed", f"must be >= 0, got {seed}")

    import time

    from ..sim.hysteresis import extrapolate_hysteresis, sweep_hysteresis

    t0 = time.perf_counter()
    cost = 4 * (1.5 * a + 1.0) / rate / eta * runs * (31 if extrapolate else 1)
    with _progress_bar("sweeping h", cost >= _BIG_RUN) as progress:
        if extrapolate:
            rates = [rate / 2**k for k in range(5)]
            ex = extrapolate_hysteresis(
                p,
                rates=rates,
                batch=batch,
                eta=eta,
                runs=runs,
                seed=seed,
                rho=rho,
                progress=progress,
            )
            res = ex.sweeps[0]
        else:
            res = sweep_hysteresis(
                p, rate=rate, batch=batch, eta=eta, runs=runs, seed=seed, rho=rho, progress=progress
            )
    if not (math.isfinite(res.h_switch_up) and math.isfinite(res.h_switch_down)):
        print(
            "moebif: warning: the replica mean never changed sign; no switch measured",
            file=sys.stderr,
        )
    report = {
        "params": p.to_dict() | {"rho": rho},
        "batch": batch,
        "eta": eta,
        "runs": runs,
        "seed": seed,
        "rate": rate,
        "h_max": res.h_max,
        "h_switch_up": _num(res.h_switch_up),
        "h_switch_down": _num(res.h_switch_down),
        "width": _num(res.width),
        "predicted_width": res.predicted_width,
        "seconds": time.perf_counter() - t0,
    }
    if extrapolate:
        report["extrapolation"] = {
            "rates": ex.rates.tolist(),
            "h_switch_up": [_num(s.h_switch_up) for s in ex.sweeps],
            "h_switch_down": [_num(s.h_switch_down) for s in ex.sweeps],
            "width": [_num(s.width) for s in ex.sweeps],
            "width_extrapolated": ex.width.limit,
            "h_switch_up_extrapolated": ex.up.limit,
            "h_switch_down_extrapolated": ex.down.limit,
            "fitted_exponent": ex.width.exponent,
            "width_extrapolated_exponent_2_3": ex.width.limit_two_thirds,
        }
    if as_json:
        emit_json(report)
        return
    from rich.console import Console

    con = Console()
    con.print(
        f"hysteresis sweep: a={a:g} gamma={gamma:g} T={T:g} rho={rho:g}  B={batch} "
        f"eta={eta:g} runs={runs} rate dh/dt={rate:g}"
    )
    con.print(
        f"switch up at h = {res.h_switch_up:.4f}, down at h = {res.h_switch_down:.4f}, "
        f"width {res.width:.4f}  (mean-field 2H(a - rho) = {res.predicted_width:.4f})"
    )
    if extrapolate:
        con.print(
            f"rate -> 0: width {ex.width.limit:.4f} (fitted exponent "
            f"{ex.width.exponent:.3f}; with exponent 2/3: {ex.width.limit_two_thirds:.4f})"
        )
    con.print(f"{report['seconds']:.2f} s")


def _num(x: float):
    return x if math.isfinite(x) else None
