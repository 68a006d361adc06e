"""The claims table and the self-contained HTML report of ``moebif reproduce``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .._io import atomic_write_text
from .._version import __version__
from . import REGISTRY

__all__ = [
    "claims_table",
    "claims_title",
    "format_margin",
    "format_spread",
    "format_value",
    "write_report",
    "write_seeds_report",
]


def format_value(v, digits: int = 4) -> str:
    """Compact text for a claim's predicted/measured value (numbers, lists, dicts)."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        if len(v) > 6:
            return "[" + ", ".join(format_value(x, 3) for x in v[:3]) + f", … ({len(v)} values)]"
        return "[" + ", ".join(format_value(x, 3) for x in v) + "]"
    if isinstance(v, dict):
        return "; ".join(f"{k}={format_value(x, 3)}" for k, x in v.items())
    return "—" if v is None else str(v)


def _is_stat(v) -> bool:
    return isinstance(v, dict) and {"min", "max", "mean", "sd"} <= set(v)


def format_spread(v, digits: int = 3) -> str:
    """Compact text for the spread of a measured value over seeds (see
    :func:`moebif.experiments.runner.aggregate_claims`): each number as ``min…max``."""
    if _is_stat(v):
        lo, hi = format_value(v["min"], digits), format_value(v["max"], digits)
        text = lo if lo == hi else f"{lo}…{hi}"
        return text + (f" ({v['missing']} NaN)" if v.get("missing") else "")
    if isinstance(v, dict) and set(v) == {"values"}:
        return "{" + ", ".join(format_value(x, digits) for x in v["values"]) + "}"
    if isinstance(v, list):
        if len(v) > 4:
            return "[" + ", ".join(format_spread(x, digits) for x in v[:2]) + f", … ({len(v)})]"
        return "[" + ", ".join(format_spread(x, digits) for x in v) + "]"
    if isinstance(v, dict):
        return "; ".join(f"{k}={format_spread(x, digits)}" for k, x in v.items())
    return format_value(v, digits)


def format_margin(c: dict) -> str:
    """A claim's margin over seeds (see :func:`moebif.experiments.runner.aggregate_claims`) as
    text: ``"3.1 (a=3)"`` (spreads, worst check); ``"—"`` where none is defined."""
    m = c.get("margin")
    if m is None:
        return f"— ({c['margin_note']})" if c.get("margin_note") else "—"
    where = f" ({c['margin_check']})" if c.get("margin_check") else ""
    return f"{m:.2g}{where}" if abs(m) < 10 else f"{m:.0f}{where}"


def _is_multi(claims: list[dict]) -> bool:
    return bool(claims) and all("fraction_holding" in c for c in claims)


def _counts(claims: list[dict]) -> tuple[int, int, int]:
    """(hold, fragile, do not hold) among the claims. A fragile claim may have held at every
    seed (margin under 2 spreads); it is counted as fragile, not as holding."""
    fragile = sum(bool(c.get("fragile")) for c in claims)
    ok = sum(bool(c["holds"]) and not c.get("fragile") for c in claims)
    return ok, fragile, len(claims) - ok - fragile


def claims_title(claims: list[dict]) -> str:
    ok, fragile, bad = _counts(claims)
    if not _is_multi(claims):
        return f"claims: {ok}/{len(claims)} hold"
    n = max((len(c["holds_at"]) for c in claims), default=0)
    return (
        f"claims: {ok}/{len(claims)} hold at all {n} seeds, {fragile} fragile, {bad} do not "
        "hold (holding: a margin of 2 seed spreads or more)"
    )


def claims_table(claims: list[dict]):
    """A rich Table of the claims (for the terminal). For a run at several seeds: the spread of
    the measured values over the seeds, the number of seeds at which each claim holds, and
    whether it holds at every seed, is fragile (some seeds) or does not hold (none)."""
    from rich.table import Table

    multi = _is_multi(claims)
    t = Table(title=claims_title(claims), show_lines=False)
    cols = [("id", {"no_wrap": True}), ("predicted", {"max_width": 36})]
    cols.append(("measured (min…max over seeds)" if multi else "measured", {"max_width": 40}))
    if multi:
        cols.append(("seeds", {"no_wrap": True}))
        cols.append(("margin", {"max_width": 24}))
    cols.append(("holds", {"no_wrap": True}))
    for col, kw in cols:
        t.add_column(col, **kw)
    for c in claims:
        row = [c["id"], format_value(c["predicted"])]
        if multi:
            n_ok, n = sum(c["holds_at"]), len(c["holds_at"])
            row += [format_spread(c["spread"]), f"{n_ok}/{n}", format_margin(c)]
            if c["holds"] and not c.get("fragile"):
                row.append("[green]yes[/green]")
            elif c.get("fragile"):
                row.append("[bold yellow]FRAGILE[/bold yellow]")
            else:
                row.append("[bold red]NO[/bold red]")
        else:
            row += [
                format_value(c["measured"]),
                "[green]yes[/green]" if c["holds"] else "[bold red]NO[/bold red]",
            ]
        t.add_row(*row)
    return t


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
 margin:2em auto;padding:0 1em;color:#1d232a;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.86em}
th,td{border:1px solid #d5d9de;padding:.3em .5em;vertical-align:top;text-align:left}
th{background:#f1f3f5} tr.ok td.holds{background:#d8f3dc;color:#1b5e20;font-weight:600}
tr.fail td.holds{background:#ffd6d6;color:#a4161a;font-weight:700}
tr.fragile td.holds{background:#fff3bf;color:#7a4d00;font-weight:700}
td.seed-ok{color:#1b5e20} td.seed-fail{background:#ffd6d6;color:#a4161a;font-weight:700}
.summary{font-size:1.05em;margin:.6em 0 1em} .muted{color:#667} img{max-width:100%;height:auto}
details{margin:.5em 0} pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:.8em}
"""

_RESULT = {"ok": "holds", "fragile": "fragile", "fail": "does not hold"}


def _status(c: dict) -> str:
    if c.get("fragile"):
        return "fragile"
    return "ok" if c["holds"] else "fail"


def _sections(folder: Path) -> list[tuple[str, dict, list[dict], str]]:
    """(id, config.json, claims, base64 PNG) of every finished experiment in ``folder``."""
    out = []
    for exp_id in REGISTRY:
        d = folder / exp_id
        try:
            meta = json.loads((d / "config.json").read_text())
            exp_claims = json.loads((d / "claims.json").read_text())
            png = (d / "figure.png").read_bytes()
        except (OSError, ValueError):
            continue
        out.append((exp_id, meta, exp_claims, base64.b64encode(png).decode("ascii")))
    return out


def _document(body: list[str]) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>moebif reproduction report</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def _header(quick: bool, extra: str = "") -> list[str]:
    return [
        "<h1>moebif: reproduction of Kiselev (2026)</h1>",
        '<p class="muted">A Minimal Bifurcation Model of Load Imbalance in a Softmax '
        f"Mixture-of-Experts Router (arXiv 2605.29121). moebif {html.escape(__version__)}"
        f"{' — quick variant' if quick else ''}{extra}.</p>",
    ]


def _section_head(exp_id: str, meta: dict, png: str, summary: str) -> list[str]:
    body = [
        f'<h2 id="{exp_id}">{html.escape(exp_id)}: {html.escape(meta["title"])}</h2>',
        f'<p class="muted">Paper: {html.escape(meta["paper"])}. {summary}</p>',
        f'<img alt="{exp_id} figure" src="data:image/png;base64,{png}">',
    ]
    if meta.get("notes"):
        body.append(f"<p>{html.escape(meta['notes'])}</p>")
    return body


def _config_details(meta: dict) -> str:
    cfg_text = html.escape(json.dumps(meta["config"], indent=1))
    return f"<details><summary>configuration</summary><pre>{cfg_text}</pre></details>"


def write_report(out: Path, *, quick: bool = False) -> Path:
    """Write ``out/report.html`` from the experiment folders present in ``out``."""
    out = Path(out)
    sections = _sections(out)
    claims = [c for _, _, exp_claims, _ in sections for c in exp_claims]
    n_ok = sum(c["holds"] for c in claims)
    rows = []
    for c in claims:
        cls = "ok" if c["holds"] else "fail"
        rows.append(
            f'<tr class="{cls}"><td>{html.escape(c["id"])}</td>'
            f"<td>{html.escape(c['statement'])}</td>"
            f"<td>{html.escape(format_value(c['predicted']))}</td>"
            f"<td>{html.escape(format_value(c['measured']))}</td>"
            f"<td>{html.escape(c['tolerance'])}</td>"
            f'<td class="holds">{_RESULT[cls]}</td></tr>'
        )
    body = [
        *_header(quick),
        f'<p class="summary"><b>{n_ok} of {len(claims)} claims hold.</b></p>',
        "<table><tr><th>id</th><th>statement</th><th>predicted</th><th>measured</th>"
        "<th>tolerance</th><th>result</th></tr>",
        *rows,
        "</table>",
    ]
    for exp_id, meta, exp_claims, png in sections:
        ok = sum(c["holds"] for c in exp_claims)
        seed = f"seed {meta['seed']}; " if meta.get("seed") is not None else ""
        body += _section_head(
            exp_id,
            meta,
            png,
            f"Run time {meta['seconds']:.1f} s{' (quick variant)' if meta.get('quick') else ''}"
            f"; {seed}{ok}/{len(exp_claims)} claims hold.",
        )
        body.append("<ul>")
        for c in exp_claims:
            mark = "✔" if c["holds"] else "✘"
            body.append(
                f"<li>{mark} <b>{html.escape(c['id'])}</b>: {html.escape(c['statement'])}</li>"
            )
        body.append("</ul>")
        body.append(_config_details(meta))
    path = out / "report.html"
    atomic_write_text(path, _document(body))
    return path


def write_seeds_report(out: Path, claims: list[dict], *, n_seeds: int, quick: bool) -> Path:
    """Write ``out/report.html`` of a run at ``n_seeds`` seeds from its aggregated ``claims``
    (:func:`moebif.experiments.runner.aggregate_claims`): every claim with the spread of its
    measured values and the seeds at which it holds; fragile claims (some seeds) are marked.
    Figures and notes are those of seed 0 (``out/seed-0``)."""
    out = Path(out)
    ok, fragile, bad = _counts(claims)
    rows = []
    for c in claims:
        cls = _status(c)
        n_ok, n = sum(c["holds_at"]), len(c["holds_at"])
        rows.append(
            f'<tr class="{cls}"><td>{html.escape(c["id"])}</td>'
            f"<td>{html.escape(c['statement'])}</td>"
            f"<td>{html.escape(format_value(c['predicted']))}</td>"
            f"<td>{html.escape(format_spread(c['spread']))}</td>"
            f"<td>{html.escape(c['tolerance'])}</td>"
            f"<td>{n_ok}/{n}</td>"
            f"<td>{html.escape(format_margin(c))}</td>"
            f'<td class="holds">{_RESULT[cls]}</td></tr>'
        )
    body = [
        *_header(quick, f" — {n_seeds} seeds"),
        f'<p class="summary"><b>{ok} of {len(claims)} claims hold at every seed; {fragile} '
        f"fragile; {bad} do not hold.</b> A claim counts as holding only if it holds at every "
        "seed with a margin of at least 2 seed spreads. The margin of a claim: for each of its "
        "checks, the seed mean of the distance of the measured value inside its tolerance, "
        "over the seed standard deviation of that distance; the smallest over the checks "
        "(named in brackets). A claim is fragile if it holds at some seeds only, or at every "
        "seed with a margin under 2 spreads; '—': no margin defined (no seed spread, or no "
        "checks). Measured values: min…max over the seeds.</p>",
        "<table><tr><th>id</th><th>statement</th><th>predicted</th><th>measured (min…max)</th>"
        "<th>tolerance (seed 0)</th><th>seeds holding</th><th>margin (spreads)</th>"
        "<th>result</th></tr>",
        *rows,
        "</table>",
    ]
    weak = [c for c in claims if not c["holds"] or c.get("fragile")]
    if weak:
        body.append("<h2 id='fragile'>Fragile claims and claims that do not hold</h2>")
        body.append(
            "<p>For each, its margin and the seeds at which it fails, with the tolerance as "
            "evaluated there (it names the margin that was missed) and the measured value. A "
            "claim that holds at some seeds only, or at every seed by less than 2 seed "
            "spreads, is fragile: a new seed may fail it.</p><ul>"
        )
        for c in weak:
            fails = [
                f"seed {sd}: {html.escape(t)}; measured {html.escape(format_value(m))}"
                for sd, h, t, m in zip(
                    c["seeds"], c["holds_at"], c["tolerances"], c["measured"], strict=True
                )
                if not h
            ]
            body.append(
                f"<li><b>{html.escape(c['id'])}</b> ({_RESULT[_status(c)]}, holds at "
                f"{sum(c['holds_at'])}/{len(c['holds_at'])} seeds, margin "
                f"{html.escape(format_margin(c))}): {html.escape(c['statement'])}"
                "<ul>" + "".join(f"<li>{f}</li>" for f in fails) + "</ul></li>"
            )
        body.append("</ul>")
    by_exp: dict[str, list[dict]] = {}
    for c in claims:
        by_exp.setdefault(c["experiment"], []).append(c)
    for exp_id, meta, _, png in _sections(out / "seed-0"):
        exp_claims = by_exp.get(exp_id, [])
        e_ok, e_fr, _ = _counts(exp_claims)
        seeds = next((c["seeds"] for c in exp_claims), [])
        body += _section_head(
            exp_id,
            meta,
            png,
            f"{'Quick variant; ' if meta.get('quick') else ''}seeds "
            f"{', '.join(str(x) for x in seeds)} (figure and notes: seed {meta.get('seed')}); "
            f"{e_ok}/{len(exp_claims)} claims hold at every seed by 2 spreads or more, "
            f"{e_fr} fragile.",
        )
        head = "".join(f"<th>seed {x}</th>" for x in seeds)
        body.append(f"<table><tr><th>claim</th>{head}<th>margin</th><th>result</th></tr>")
        for c in exp_claims:
            cells = "".join(
                f'<td class="{"seed-ok" if h else "seed-fail"}" '
                f'title="{html.escape(format_value(m))}">{"✔" if h else "✘"} '
                f"{html.escape(format_value(m, 3))}</td>"
                for h, m in zip(c["holds_at"], c["measured"], strict=True)
            )
            cls = _status(c)
            body.append(
                f'<tr class="{cls}"><td><b>{html.escape(c["id"])}</b></td>{cells}'
                f"<td>{html.escape(format_margin(c))}</td>"
                f'<td class="holds">{_RESULT[cls]}</td></tr>'
            )
        body.append("</table>")
        body.append(_config_details(meta))
    path = out / "report.html"
    atomic_write_text(path, _document(body))
    return path
