"""The ``moebif`` command: parses, validates, calls the library, prints.

Contract (SPEC section 4): ``--json`` prints exactly one JSON object on stdout; bad input exits
with code 2 and one line on stderr naming the argument, never a traceback. Heavy modules (numba
kernels, matplotlib, torch) are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._io import OutputError
from ._version import __version__
from .params import ParameterError, RouterParams

app = typer.Typer(
    name="moebif",
    help="Bifurcations, hysteresis and collapse of adaptive softmax MoE routers (Kiselev 2026).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# names of library fields -> the CLI option that sets them, for error messages
_OPTION_OF = {
    "a": "--a",
    "gamma": "--gamma",
    "T": "--T",
    "h": "--h",
    "n_experts": "--experts",
    "eta": "--eta",
    "batch": "--batch",
    "steps": "--steps",
    "runs": "--runs",
    "rho": "--rho",
    "rate": "--rate",
    "y0": "--y0",
    "seed": "--seed",
}


class CLIError(Exception):
    """Bad input detected by a command: reported as one line, exit code 2."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")


def _params(a: float, gamma: float, T: float, h: float, experts: int) -> RouterParams:
    try:
        return RouterParams(a=a, gamma=gamma, T=T, h=h, n_experts=experts)
    except ParameterError as e:
        raise CLIError(_OPTION_OF.get(e.name, e.name), str(e).split(": ", 1)[1]) from None


def _finite(option: str, value: float) -> float:
    if not math.isfinite(value):
        raise CLIError(option, f"must be finite, got {value}")
    return value


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, allow_nan=False) + "\n")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"moebif {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = False,
) -> None:
    """moebif: the bifurcation model of adaptive softmax routers, exact and simulated."""


# ----------------------------------------------------------------------------------------------
# theory


def theory_report(params: RouterParams, top_k: int = 1) -> dict:
    """The JSON object of ``moebif theory`` (also used by the report and the tests).

    With ``top_k > 1`` (top-k routing, N >= 3): the thresholds of the inclusion-probability mean
    field (:mod:`moebif.topk`): ``critical_a`` = the linear threshold ``a_lin``, ``collapse_a`` =
    ``a_SN`` and ``collapse_winners`` (the branch where the stable collapsed state appears)."""
    from . import nexperts, theory

    p = params
    if top_k > 1:
        from . import topk

        a_lin = topk.topk_linear_threshold(p.n_experts, top_k, p.gamma, p.T)
        a_sn, m = topk.topk_collapse_threshold(p.n_experts, top_k, p.gamma, p.T)
        alpha = topk.topk_uniform_slope(p.n_experts, top_k)
        return {
            "params": p.to_dict(),
            "top_k": top_k,
            "critical_a": a_lin,
            "kappa": p.a / a_lin,
            "collapse_a": a_sn,
            "collapse_winners": m,
            "regime": "collapsing"
            if p.a >= a_lin
            else ("metastable" if p.a >= a_sn else "balanced"),
            "uniform_state_eigenvalues": {
                "common": -p.gamma,
                "contrast": p.a * alpha / (top_k * p.T) - p.gamma,
                "contrast_multiplicity": p.n_experts - 1,
            },
        }
    out: dict = {
        "params": p.to_dict(),
        "critical_a": p.critical_a,
        "kappa": p.kappa,
        "uniform_state_eigenvalues": theory.uniform_state_eigenvalues(p),
    }
    if p.n_experts == 2:
        out["regime"] = theory.regime(p)
        out["hysteresis_halfwidth"] = theory.hysteresis_halfwidth(p.a, p.gamma, p.T)
        out["equilibria"] = [e.to_dict() for e in theory.equilibria(p)]
    else:
        out["collapse_a"] = nexperts.collapse_threshold(p.n_experts, p.gamma, p.T)
        out["regime"] = nexperts.regime(p)
        out["equilibria"] = [e.to_dict() for e in nexperts.symmetric_equilibria(p)]
    return out


@app.command()
def theory(
    a: Annotated[float, typer.Option("--a", help="Reinforcement strength a >= 0.")],
    gamma: Annotated[float, typer.Option("--gamma", help="Forgetting gamma > 0.")],
    T: Annotated[float, typer.Option("--T", help="Softmax temperature T > 0.")],
    h: Annotated[float, typer.Option("--h", help="External skew h = b1 - b2.")] = 0.0,
    experts: Annotated[int, typer.Option("--experts", help="Number of experts N >= 2.")] = 2,
    top_k: Annotated[
        int, typer.Option("--top-k", help="Experts per token K (top-k routing), 1 <= K < N.")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Equilibria, stability, thresholds and regime of the mean-field router."""
    p = _params(a, gamma, T, h, experts)
    if not 1 <= top_k < experts:
        raise CLIError("--top-k", f"must be in 1..{experts - 1} for {experts} experts, got {top_k}")
    rep = theory_report(p, top_k)
    if as_json:
        _emit_json(rep)
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if top_k > 1:
        con.print(
            f"a={p.a:g}  gamma={p.gamma:g}  T={p.T:g}  N={p.n_experts}  top-{top_k} routing   "
            f"linear threshold a_lin = {rep['critical_a']:.6g}   kappa = {rep['kappa']:.4g}"
        )
        con.print(
            f"regime: [bold]{rep['regime']}[/bold]   collapse threshold a_SN = "
            f"{rep['collapse_a']:.6g} ({rep['collapse_winners']} winner(s))"
        )
        eig = rep["uniform_state_eigenvalues"]
        con.print(
            f"uniform state: eigenvalue {eig['common']:.4g} (common mode), "
            f"{eig['contrast']:.4g} x{eig['contrast_multiplicity']} (contrast modes)"
        )
        return
    con.print(
        f"a={p.a:g}  gamma={p.gamma:g}  T={p.T:g}  h={p.h:g}  N={p.n_experts}   "
        f"critical a = N gamma T = {rep['critical_a']:g}   kappa = {rep['kappa']:.4g}"
    )
    line = f"regime: [bold]{rep['regime']}[/bold]"
    if p.n_experts == 2:
        line += f"   hysteresis half-width H(a) = {rep['hysteresis_halfwidth']:.6g}"
    else:
        line += f"   collapse threshold a_SN = {rep['collapse_a']:.6g}"
    con.print(line)
    eig = rep["uniform_state_eigenvalues"]
    con.print(
        f"uniform state: eigenvalue {eig['common']:.4g} (common mode), "
        f"{eig['contrast']:.4g} x{eig['contrast_multiplicity']} (contrast modes)"
    )
    table = Table(title="equilibria" if p.n_experts == 2 else "symmetric equilibria (b = 0)")
    if p.n_experts == 2:
        cols = ("y = r1 - r2", "u = tanh(y/2T)", "eigenvalue F_y", "stable")
        for c in cols:
            table.add_column(c, justify="right")
        for e in rep["equilibria"]:
            table.add_row(
                f"{e['y']:.10g}", f"{e['u']:.10g}", f"{e['eigenvalue']:.6g}", str(e["stable"])
            )
    else:
        for c in ("winners m", "score gap d", "max load", "max eigenvalue", "stable"):
            table.add_column(c, justify="right")
        for e in rep["equilibria"]:
            table.add_row(
                str(e["winners"]),
                f"{e['gap']:.6g}",
                f"{e['max_load']:.6g}",
                f"{e['eigenvalue']:.6g}",
                str(e["stable"]),
            )
    con.print(table)


# ----------------------------------------------------------------------------------------------
# fold-curve


@app.command("fold-curve")
def fold_curve_cmd(
    gamma: Annotated[float, typer.Option("--gamma", help="Forgetting gamma > 0.")],
    T: Annotated[float, typer.Option("--T", help="Softmax temperature T > 0.")],
    q_max: Annotated[float, typer.Option("--q-max", help="Parameter range |q| <= Q.")] = 2.0,
    points: Annotated[int, typer.Option("--points", help="Number of points P >= 2.")] = 201,
    csv: Annotated[
        Path | None, typer.Option("--csv", help="Write the curve to FILE as CSV.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The fold (saddle-node) curve (16) in the (a, h) plane, q in [-Q, Q]."""
    import numpy as np

    from . import theory

    _params(2.0 * gamma * T if gamma > 0 and T > 0 else 0.0, gamma, T, 0.0, 2)
    if not (math.isfinite(q_max) and q_max > 0):
        raise CLIError("--q-max", f"must be finite and > 0, got {q_max}")
    if q_max > 300:
        raise CLIError("--q-max", f"must be <= 300 (cosh^2 q overflows beyond), got {q_max}")
    if points < 2:
        raise CLIError("--points", f"must be >= 2, got {points}")
    if csv is not None and as_json:
        raise CLIError("--csv", "use either --csv or --json, not both")
    q = np.linspace(-q_max, q_max, points)
    a, hh = theory.fold_curve(q, gamma, T)
    y = 2.0 * T * q
    if csv is not None:
        from ._io import atomic_write_text, check_writable_file

        check_writable_file("--csv", csv)
        rows = ["q,a,h,y"] + [
            f"{qi!r},{ai!r},{hi!r},{yi!r}" for qi, ai, hi, yi in zip(q, a, hh, y, strict=True)
        ]
        atomic_write_text(csv, "\n".join(rows) + "\n")
        print(f"wrote {points} points to {csv}", file=sys.stderr)
        return
    if as_json:
        _emit_json(
            {
                "params": {"gamma": gamma, "T": T},
                "cusp": {"a": 2.0 * gamma * T, "h": 0.0},
                "q": q.tolist(),
                "a": a.tolist(),
                "h": hh.tolist(),
                "y": y.tolist(),
            }
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"fold curve (16), gamma={gamma:g}, T={T:g}; cusp at a={2 * gamma * T:g}, h=0"
    )
    for c in ("q", "a(q)", "h(q)", "y = 2Tq"):
        table.add_column(c, justify="right")
    idx = np.unique(np.linspace(0, points - 1, min(points, 11)).round().astype(int))
    for i in idx:
        table.add_row(f"{q[i]:.4g}", f"{a[i]:.6g}", f"{hh[i]:.6g}", f"{y[i]:.4g}")
    Console().print(table)


# ----------------------------------------------------------------------------------------------
# reproduce


@app.command()
def reproduce(
    only: Annotated[
        str | None, typer.Option("--only", help="Comma-separated experiment ids (default: all).")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small, fast variant.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("results"),
    jobs: Annotated[int, typer.Option("--jobs", help="Worker processes J >= 1.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Recompute finished experiments.")] = False,
) -> int:
    """Reproduce the paper's experiments into OUT, with figures, data, claims and a report."""
    from ._io import check_writable_dir
    from .experiments import REGISTRY

    ids = None
    if only is not None:
        ids = [i.strip() for i in only.split(",") if i.strip()]
        unknown = [i for i in ids if i not in REGISTRY]
        if unknown or not ids:
            known = ", ".join(REGISTRY)
            msg = (
                f"unknown experiment id {unknown[0]!r} (known: {known})"
                if unknown
                else ("no ids given")
            )
            raise CLIError("--only", msg)
        ids = list(dict.fromkeys(ids))
    if jobs < 1:
        raise CLIError("--jobs", f"must be >= 1, got {jobs}")
    check_writable_dir("--out", out)

    from rich.console import Console

    from .report import claims_table
    from .reproduce import reproduce as run_reproduce

    outcomes = run_reproduce(ids, out=out, quick=quick, jobs=jobs, force=force)
    claims = [c for o in outcomes for c in o.claims]
    con = Console()
    con.print(claims_table(claims))
    con.print(f"report: {out / 'report.html'}   claims: {out / 'claims.json'}")
    failed = [o.id for o in outcomes if o.status == "failed"]
    if failed:
        print(f"moebif: error: experiments failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------
# entry point


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and turns bad input into exit code 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        _load_extra_commands()
        rv = app(args=args, prog_name="moebif", standalone_mode=False)
    except typer.TyperException as e:  # usage errors of the parser: bad value, unknown option
        msg = _one_line(e.format_message())
        if getattr(e, "exit_code", 2) != 2:
            print(f"moebif: error: {msg}", file=sys.stderr)
            return int(e.exit_code)
        _fail(msg)
    except (CLIError, ParameterError, OutputError) as e:
        if isinstance(e, ParameterError) and e.name in _OPTION_OF:
            e = CLIError(_OPTION_OF[e.name], str(e).split(": ", 1)[1])
        _fail(_one_line(str(e)))
    except (typer.Abort, KeyboardInterrupt):
        print("moebif: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    return rv if isinstance(rv, int) else 0


def _fail(message: str) -> None:
    print(f"moebif: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _load_extra_commands() -> None:
    """Register the commands that live in their own modules (simulate, hysteresis, branches)."""
    from . import _cli_monitor, _cli_nexp, _cli_sim  # noqa: F401


_load_extra_commands()

if __name__ == "__main__":
    sys.exit(main())
