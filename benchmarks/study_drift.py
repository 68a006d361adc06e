"""Slow drives to collapse on real text: does the monitor see a collapse that creeps in?

Tiny random-init Hugging Face MoE models (:func:`moebif.monitor.tiny.tiny_model`) trained on CPU
with AdamW (lr 2e-3, batches of 8 x 64 byte-level tokens of one offline corpus), with
``RouterMonitor(model, log=...)`` at its defaults. Phases:

- ``healthy``: ``--steps`` (3000) steps at aux coefficient 0.01;
- ``drift``: 1000 healthy steps at aux 0.01, then ``model.router_aux_loss_coef`` ramped linearly
  to ``--target`` (-0.25) over ``--ramp`` (2000) steps.

Each run writes ``<out>/<family>-<corpus>-<phase>.json`` (per-step loads per layer, the online
alarms) and the monitor's log ``.jsonl`` beside it; a finished run is not recomputed (delete its
JSON to redo it). The report replays every log with the current :class:`LayerMonitor` (so the
rules can change without retraining) and prints, per layer:

- the independent collapse step: the first step >= 1000 at which the trailing 20-step mean of
  the max-load excess ``E = (max_i f_i - 1/N) / (1/k - 1/N)`` is 0.3 or more above its median
  over steps 500-1000 (not the monitor's rule);
- the first drift/collapse alarm (``collapse-in-progress``, ``collapsed``) and its lead (+) or
  lag (-) on that step, and (drift runs) the first one of the monitor with the short-term
  (following) reference only (``frozen_reference=False``, the rule before the frozen
  reference; fed the counts without the importance, for speed), the ``dead-experts`` alarms,
  and the alarms of the healthy runs (false alarms unless the independent criterion was
  crossed before them).

Usage: ``python benchmarks/study_drift.py --runs qwen3_moe:pydoc granitemoe:licenses`` (trains
what is missing, then reports); ``--report`` only reports.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

COLLAPSE_KINDS = ("collapse-in-progress", "collapsed")
ALARM_KINDS = (*COLLAPSE_KINDS, "dead-experts", "approaching-threshold", "metastable")
HEALTHY_AUX = 0.01
RISE = 0.3  # independent criterion: rise of the 20-step mean excess above the 500-1000 median


def _train(family: str, corpus: str, phase: str, args, out: Path) -> dict:
    import torch

    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.tiny import corpus as load_corpus
    from moebif.monitor.tiny import text_batches, tiny_model

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = tiny_model(family, args.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    stem = f"{family}-{corpus}-{phase}{args.tag}"
    log = out / f"{stem}.jsonl"
    if log.exists():
        log.unlink()
    mon = RouterMonitor(model, log=log)
    loads = {label: [] for label in mon.monitors}
    steps = args.steps if phase == "healthy" else args.healthy + args.ramp
    alarms, t0 = [], time.time()
    data = load_corpus(corpus)
    for i, x in enumerate(text_batches(steps, 8, 64, seed=args.seed, corpus=data)):
        coef = HEALTHY_AUX
        if phase == "drift" and i >= args.healthy:
            frac = (i - args.healthy) / args.ramp
            coef = HEALTHY_AUX + frac * (args.target - HEALTHY_AUX)
        model.router_aux_loss_coef = coef
        model.config.router_aux_loss_coef = coef
        res = model(input_ids=x, labels=x)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        alarms += [a.to_dict() for a in mon.step()]
        for label in mon.monitors:
            c = mon.counts(label)[-1]
            loads[label].append((c / max(c.sum(), 1)).tolist())
        if i % 250 == 0:
            took = time.time() - t0
            print(f"  {stem} step {i} {took:.0f}s loss {res.loss.item():.3f}", flush=True)
    mon.close()
    top_k = {label: m.top_k for label, m in mon.monitors.items()}
    return {
        "family": family,
        "corpus": corpus,
        "phase": phase,
        "steps": steps,
        "healthy_steps": args.healthy if phase == "drift" else steps,
        "ramp": [args.healthy, args.healthy + args.ramp, args.target] if phase == "drift" else None,
        "lr": args.lr,
        "seed": args.seed,
        "seconds": time.time() - t0,
        "top_k": top_k,
        "online_alarms": alarms,
        "loads": {k: np.round(np.array(v), 5).tolist() for k, v in loads.items()},
        "log": log.name,
    }


def replay(lay, importance=True, **options):
    """The alarms and final summary of one layer of a log (:class:`moebif.monitor.LayerLog`) fed
    step by step to the current :class:`LayerMonitor` at the defaults ``RouterMonitor`` uses
    (and ``options``): what the online monitor computes, step for step. ``importance=False``
    feeds the counts only (faster; the fits, hence the dwell, may differ a little)."""
    from moebif.monitor import LayerMonitor

    mon = LayerMonitor(lay.n_experts, top_k=lay.top_k, name=lay.name, **options)
    imp = lay.importance if importance else None
    if imp is None:
        mon.update_many(lay.counts)
    else:
        for t in range(lay.counts.shape[0]):
            mon.update(lay.counts[t], imp[t])
    return [a.to_dict() for a in mon.alarms], mon.summary()


def independent(loads, top_k: int, start: int = 500) -> dict:
    """The independent collapse step (module docstring) of one layer's loads, shape (S, N)."""
    f = np.asarray(loads)
    n = f.shape[1]
    e = (f.max(1) - 1.0 / n) / (1.0 / top_k - 1.0 / n)
    c = np.concatenate([[0.0], np.cumsum(e)])
    trailing = np.full(e.size, np.nan)
    trailing[19:] = (c[20:] - c[:-20]) / 20.0
    base = float(np.median(trailing[500:1000]))
    hit = np.nonzero(trailing[start:] >= base + RISE)[0]
    return {
        "base": base,
        "final": float(np.nanmean(trailing[-100:])),
        "collapse_step": int(start + hit[0] + 1) if hit.size else None,  # steps are 1-based
        "dead_final": int(np.sum(f[-100:].mean(0) < 0.1 / n)),
    }


def evaluate(loads, top_k: int, alarms: list[dict], healthy: bool) -> dict:
    """The independent criterion of one layer against its alarms."""
    d = independent(loads, top_k)
    first = next((a["step"] for a in alarms if a["kind"] in COLLAPSE_KINDS), None)
    d["first_collapse_alarm"] = first
    d["dead_alarms"] = [a["step"] for a in alarms if a["kind"] == "dead-experts"]
    d["recovered"] = [a["step"] for a in alarms if a["kind"] == "recovered"]
    t = d["collapse_step"]
    d["lead"] = None if (first is None or t is None) else t - first
    d["alarms"] = [(a["step"], a["kind"]) for a in alarms]
    if healthy:
        # an alarm is false unless the independent criterion was crossed before it
        d["false"] = [
            (a["step"], a["kind"])
            for a in alarms
            if a["kind"] in ALARM_KINDS and (t is None or a["step"] < t)
        ]
    return d


def report(out: Path, logs=()) -> dict:
    """Replay every log of ``out`` (and ``logs``: router logs of other studies with the same
    protocol, a name with ``healthy`` for a run without a drive) and print the table."""
    from moebif.monitor import load_fractions, read_log

    rows = {}
    for p in sorted(out.glob("*.jsonl")) + [Path(x) for x in logs]:
        if p.parent == out and not p.with_suffix(".json").exists():
            continue  # a run still training
        healthy = "healthy" in p.stem
        ev = {}
        for lay in read_log(p).layers.values():
            alarms, summary = replay(lay)
            d = evaluate(load_fractions(lay.counts), lay.top_k, alarms, healthy)
            if not healthy:
                # the short-term (following) reference alone: the monitor before the frozen one
                d["following_only_alarm"] = next(
                    (
                        a["step"]
                        for a in replay(lay, False, frozen_reference=False)[0]
                        if a["kind"] in COLLAPSE_KINDS
                    ),
                    None,
                )
            d["regime"], d["state"] = summary["regime"], summary["state"]
            d["reference"] = summary["reference"]
            extra = f"false {d['false']}" if healthy else ""
            print(
                f"{p.stem:32s} {lay.name:22s} base {d['base']:.2f} final {d['final']:.2f} "
                f"dead {d['dead_final']} collapse@{d['collapse_step']} "
                f"alarm@{d['first_collapse_alarm']} lead {d['lead']} "
                f"following-only@{d.get('following_only_alarm', '-')} "
                f"dead-experts@{d['dead_alarms'][:3]} recovered@{d['recovered'][:3]} "
                f"state {d['state']} {extra}",
                flush=True,
            )
            print(f"{'':32s} alarms {d['alarms']}", flush=True)
            ev[lay.name] = d
        rows[p.stem] = ev
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/study_drift"))
    ap.add_argument("--runs", nargs="*", default=["qwen3_moe:pydoc", "granitemoe:licenses"])
    ap.add_argument("--phases", nargs="*", default=["drift", "healthy"])
    ap.add_argument("--steps", type=int, default=3000, help="healthy run length")
    ap.add_argument("--healthy", type=int, default=1000, help="healthy steps before the ramp")
    ap.add_argument("--ramp", type=int, default=2000)
    ap.add_argument("--target", type=float, default=-0.25)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the run names (e.g. another --target)")
    ap.add_argument("--report", action="store_true", help="only report the finished runs")
    ap.add_argument("--no-report", action="store_true", help="only train the missing runs")
    ap.add_argument("--logs", nargs="*", default=[], help="more router logs to report on")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for spec in args.runs:
            family, corpus = spec.split(":")
            for phase in args.phases:
                path = args.out / f"{family}-{corpus}-{phase}{args.tag}.json"
                if path.exists():
                    continue
                run = _train(family, corpus, phase, args, args.out)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(run))
                tmp.replace(path)
    if not args.no_report:
        report(args.out, args.logs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
