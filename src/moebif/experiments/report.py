"""The claims table and the self-contained HTML report of ``moebif reproduce``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .._io import atomic_write_text
from .._version import __version__
from . import REGISTRY

__all__ = ["claims_table", "format_value", "write_report"]


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


def claims_table(claims: list[dict]):
    """A rich Table of the claims (for the terminal)."""
    from rich.table import Table

    n_ok = sum(c["holds"] for c in claims)
    t = Table(title=f"claims: {n_ok}/{len(claims)} hold", show_lines=False)
    for col, kw in (
        ("id", {"no_wrap": True}),
        ("predicted", {"max_width": 36}),
        ("measured", {"max_width": 36}),
        ("holds", {}),
    ):
        t.add_column(col, **kw)
    for c in claims:
        t.add_row(
            c["id"],
            format_value(c["predicted"]),
            format_value(c["measured"]),
            "[green]yes[/green]" if c["holds"] else "[bold red]NO[/bold red]",
        )
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
.summary{font-size:1.05em;margin:.6em 0 1em} .muted{color:#667} img{max-width:100%;height:auto}
details{margin:.5em 0} pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:.8em}
"""


def write_report(out: Path, *, quick: bool = False) -> Path:
    """Write ``out/report.html`` from the experiment folders present in ``out``."""
    out = Path(out)
    sections, claims = [], []
    for exp_id in REGISTRY:
        d = out / exp_id
        try:
            meta = json.loads((d / "config.json").read_text())
            exp_claims = json.loads((d / "claims.json").read_text())
            png = (d / "figure.png").read_bytes()
        except (OSError, ValueError):
            continue
        claims.extend(exp_claims)
        sections.append((exp_id, meta, exp_claims, base64.b64encode(png).decode("ascii")))

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
            f'<td class="holds">{"holds" if c["holds"] else "does not hold"}</td></tr>'
        )
    body = [
        "<h1>moebif: reproduction of Kiselev (2026)</h1>",
        '<p class="muted">A Minimal Bifurcation Model of Load Imbalance in a Softmax '
        f"Mixture-of-Experts Router (arXiv 2605.29121). moebif {html.escape(__version__)}"
        f"{' — quick variant' if quick else ''}.</p>",
        f'<p class="summary"><b>{n_ok} of {len(claims)} claims hold.</b></p>',
        "<table><tr><th>id</th><th>statement</th><th>predicted</th><th>measured</th>"
        "<th>tolerance</th><th>result</th></tr>",
        *rows,
        "</table>",
    ]
    for exp_id, meta, exp_claims, png in sections:
        ok = sum(c["holds"] for c in exp_claims)
        body += [
            f'<h2 id="{exp_id}">{html.escape(exp_id)}: {html.escape(meta["title"])}</h2>',
            f'<p class="muted">Paper: {html.escape(meta["paper"])}. Run time '
            f"{meta['seconds']:.1f} s{' (quick variant)' if meta.get('quick') else ''}; "
            f"{ok}/{len(exp_claims)} claims hold.</p>",
            f'<img alt="{exp_id} figure" src="data:image/png;base64,{png}">',
        ]
        if meta.get("notes"):
            body.append(f"<p>{html.escape(meta['notes'])}</p>")
        body.append("<ul>")
        for c in exp_claims:
            mark = "✔" if c["holds"] else "✘"
            body.append(
                f"<li>{mark} <b>{html.escape(c['id'])}</b>: {html.escape(c['statement'])}</li>"
            )
        body.append("</ul>")
        cfg_text = html.escape(json.dumps(meta["config"], indent=1))
        body.append(f"<details><summary>configuration</summary><pre>{cfg_text}</pre></details>")
    doc = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>moebif reproduction report</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    path = out / "report.html"
    atomic_write_text(path, doc)
    return path
