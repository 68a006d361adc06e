"""What every benchmark shares: its printed tables, its targets, the JSON it writes, its exit code.

A benchmark builds one :class:`Report`, adds tables (:meth:`Report.table`), the ratios it
promises (:meth:`Report.check`) and yes/no properties (:meth:`Report.require`), and ends with
``sys.exit(report.finish())``: the checks are printed with their verdicts, everything is written
as JSON (``--json PATH``, default ``bench-results/<name>.json``; the folder is git-ignored), and
the exit code is 0 only if every check met its target (1 otherwise; 2 for bad arguments, from
argparse)::

    def main(argv=None) -> int:
        args = arguments(__doc__, argv)
        report = Report("router", "batch router, B=512 ...", json_path=args.json)
        report.table("ensembles", [("method", "<30"), ("seconds", ">9.4f")], rows)
        report.check("kernel / floor", ratio, 0.8)
        return report.finish()

Speed is measured as ratios side by side in one run; on a shared machine the absolute times
vary, the ratios much less.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["Report", "arguments", "default_json_path"]

RESULTS = Path("bench-results")


def default_json_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def arguments(doc: str | None, argv=None, parser: argparse.ArgumentParser | None = None):
    """Parse a benchmark's command line: ``--json PATH`` (plus whatever ``parser`` adds)."""
    if parser is None:
        parser = argparse.ArgumentParser(
            description=(doc or "").strip().splitlines()[0] if doc else None
        )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the results as JSON (default: bench-results/<name>.json)",
    )
    return parser.parse_args(argv)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _cell(value, fmt: str) -> str:
    if value is None:
        value = "—"
    if isinstance(value, str):
        align = fmt[0] if fmt[:1] in "<>^" else "<"
        width = "".join(ch for ch in fmt.lstrip("<>^").split(".")[0] if ch.isdigit())
        return f"{value:{align}{width}}"
    return f"{value:{fmt}}"


class Report:
    """The tables and checks of one benchmark run (see the module docstring)."""

    def __init__(self, name: str, title: str, *, json_path: str | os.PathLike | None = None):
        self.name = name
        self.title = title
        self.json_path = Path(json_path) if json_path is not None else default_json_path(name)
        self.tables: list[dict] = []
        self.checks: list[dict] = []
        self.notes: list[str] = []
        self.data: dict = {}  # raw measurements, written to the JSON as they are
        self._t0 = time.perf_counter()
        print(title)

    def table(self, title: str, columns: list[tuple[str, str]], rows: list[list]) -> None:
        """Print a table and keep it for the JSON. ``columns``: ``(name, format spec)`` pairs,
        e.g. ``("seconds", ">10.4f")``; a string cell is aligned and padded like the spec."""
        specs = [fmt for _, fmt in columns]
        header = " ".join(_cell(name, fmt) for name, fmt in columns)
        if title:
            print(f"\n{title}")
        print(header)
        print("-" * len(header))
        for row in rows:
            print(" ".join(_cell(v, f) for v, f in zip(row, specs, strict=True)))
        print("-" * len(header))
        self.tables.append(
            {
                "title": title,
                "columns": [name for name, _ in columns],
                "rows": [dict(zip([n for n, _ in columns], row, strict=True)) for row in rows],
            }
        )

    def check(
        self, label: str, value: float, target: float, *, at_least: bool = True, unit: str = "x"
    ) -> bool:
        """A promised ratio: ``value >= target`` (or ``<=`` with ``at_least=False``). A value
        that could not be measured (NaN) does not meet its target. ``unit``: how the value is
        printed (a ratio, ``"x"``, by default; e.g. ``" ms"`` for a latency, then also in the
        JSON)."""
        ok = bool(value >= target) if at_least else bool(value <= target)
        ok = ok and math.isfinite(value)
        entry = {
            "label": label,
            "value": float(value),
            "target": float(target),
            "comparison": ">=" if at_least else "<=",
            "ok": ok,
        }
        if unit != "x":
            entry["unit"] = unit
        self.checks.append(entry)
        return ok

    def require(self, label: str, ok: bool) -> bool:
        """A property the run must have (e.g. results identical to a reference)."""
        self.checks.append({"label": label, "value": bool(ok), "target": True, "ok": bool(ok)})
        return bool(ok)

    def note(self, text: str) -> None:
        print(text)
        self.notes.append(text)

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def finish(self) -> int:
        """Print the checks, write the JSON, return the exit code (0: every target met)."""
        if self.checks:
            print()
            width = max(len(c["label"]) for c in self.checks)
            for c in self.checks:
                if "comparison" not in c:  # a requirement
                    print(
                        f"{c['label']:<{width}}  {'yes' if c['ok'] else 'NO':>9}    "
                        f"{'ok' if c['ok'] else 'FAILED'}"
                    )
                    continue
                verdict = "ok" if c["ok"] else "BELOW TARGET"
                unit = c.get("unit", "x")
                print(
                    f"{c['label']:<{width}}  {c['value']:>9.2f}{unit}   target {c['comparison']} "
                    f"{c['target']:g}{unit}   {verdict}"
                )
        failed = [c["label"] for c in self.checks if not c["ok"]]
        doc = {
            "benchmark": self.name,
            "title": self.title,
            "ok": not failed,
            "failed": failed,
            "checks": self.checks,
            "tables": self.tables,
            "notes": self.notes,
            "data": self.data,
            "seconds": time.perf_counter() - self._t0,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
        }
        self._write(doc)
        print(f"\nresults: {self.json_path}")
        if failed:
            print(
                f"{self.name}: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr
            )
            return 1
        return 0

    def _write(self, doc: dict) -> None:
        path = self.json_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(_jsonable(doc), fh, indent=2, allow_nan=False)
                fh.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
