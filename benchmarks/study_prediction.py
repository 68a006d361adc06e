"""Prediction study on real training (issue 19): does the monitor warn before a router collapses?

Tiny random-init Hugging Face MoE models (:func:`moebif.monitor.tiny.tiny_model`) trained on CPU
with AdamW (lr 2e-3, batch 8 x 64) on byte-level text of an offline corpus
(:func:`moebif.monitor.tiny.corpus`), ``RouterMonitor(model, log=...)`` at its defaults (the force
probe included). Drives:

- ``healthy``: 3000 steps at aux 0.01;
- ``default``: 3000 steps at the family's Hugging Face default aux coefficient;
- ``ramp025``: 1000 steps at aux 0.01, then the coefficient ramped linearly to -0.25 over 2000;
- ``ramp1``: 1000 steps at aux 0.01, then ramped linearly to -1 over 1500 steps.

Each run writes ``<out>/<family>-<corpus>-<drive>-s<seed>.json`` (per step: the coefficient and
the LM loss; per layer: the loads' max-load excess, the online alarms, the forecast history) and
the monitor's log beside it. A finished run is skipped. ``--report`` reads the JSON files and
prints the tables: per layer and drive, the independent collapse step (the 20-step mean of the
max-load excess rising 0.3 above its median over steps 500-1000), the first
``approaching-threshold`` and its lead, the forecast knob value at the alarm against the
coefficient at collapse, ``alpha*`` at step 1000, and the false alarms of the healthy runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DRIVES = ("healthy", "default", "ramp025", "ramp1")
# probe variants recorded beside the monitor's own (shock, mean input, normalisation)
VARIANTS = {
    "loads-batch-adam": ("loads", "batch", "adam"),
    "loads-ema-adam": ("loads", "ema", "adam"),
    "offset-batch-adam": ("offset", "batch", "adam"),
    "offset-ema-adam": ("offset", "ema", "adam"),
    "offset-ema-none": ("offset", "ema", "none"),
    "loads-ema-none": ("loads", "ema", "none"),
}


def _variant_probes(mon):
    """Extra force probes (each with its own 5 sums) on every router the monitor probes."""
    import torch

    from moebif.monitor.force_probe import ForceProbe
    from moebif.monitor.hooks import _first_scores, _tensors

    probes = {}
    for lab, r in mon._routes.items():
        if r.probe is None:
            continue
        for name, (shock, mean_input, norm) in VARIANTS.items():
            seg = torch.zeros(5, dtype=torch.float64)
            pr = ForceProbe(
                r.module, r.n, r.k, seg, r.buf[2 : r.n + 2], mon._pool_for(r),
                r.probe.coefficient, shock=shock, mean_input=mean_input, normalise=norm,
            )  # fmt: skip
            probes[(lab, name)] = pr

            def hook(module, args, output, pr=pr, n=r.n):
                if module.training:
                    pr.forward(args, _first_scores(_tensors(output), n))

            r.module.register_forward_hook(hook)
    return probes


def schedule(drive: str, default_coef: float):
    """``(steps, coef(step))`` of a drive."""
    if drive == "healthy":
        return 3000, lambda i: 0.01
    if drive == "default":
        return 3000, lambda i: default_coef
    if drive == "ramp025":
        return (
            3000,
            lambda i: 0.01 if i < 1000 else 0.01 + (-0.25 - 0.01) * min(1.0, (i - 1000) / 2000),
        )
    if drive == "ramp1":
        return (
            2500,
            lambda i: 0.01 if i < 1000 else 0.01 + (-1.0 - 0.01) * min(1.0, (i - 1000) / 1500),
        )
    raise ValueError(f"drive: one of {DRIVES}, got {drive!r}")


def run(family: str, corpus_name: str, drive: str, seed: int, out: Path) -> Path:
    import torch

    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.metrics import max_load_excess
    from moebif.monitor.tiny import corpus, text_batches, tiny_model

    path = out / f"{family}-{corpus_name}-{drive}-s{seed}.json"
    if path.exists():
        return path
    torch.set_num_threads(1)
    model = tiny_model(family, seed)
    model.train()
    default_coef = float(type(model.config)().router_aux_loss_coef or 0.0)
    steps, coef = schedule(drive, default_coef)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    log = out / (path.stem + ".jsonl")
    if log.exists():
        log.unlink()
    mon = RouterMonitor(model, log=log)
    probes = _variant_probes(mon)
    rec = {key: [] for key in probes}
    data = corpus(corpus_name)
    coefs, losses, excess = [], [], {lab: [] for lab in mon.monitors}
    t0 = time.time()
    for i, x in enumerate(text_batches(steps, 8, 64, seed=seed, corpus=data)):
        c = coef(i)
        model.router_aux_loss_coef = c
        outp = model(input_ids=x, labels=x)
        aux = outp.aux_loss if outp.aux_loss is not None else 0.0
        lm = float((outp.loss - c * aux).detach()) if torch.is_tensor(aux) else float(outp.loss)
        outp.loss.backward()
        for key, pr in probes.items():
            rec[key].append(pr.seg.tolist())
            pr.seg.zero_()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mon.step()
        coefs.append(c)
        losses.append(lm)
        for lab in mon.monitors:
            cnt = mon.counts(lab)[-1]
            k = mon.monitors[lab].top_k
            excess[lab].append(max_load_excess(float(cnt.max() / cnt.sum()), len(cnt), k))
        if i % 500 == 0:
            print(f"{path.stem}: step {i} loss {lm:.3f} ({time.time() - t0:.0f} s)", flush=True)
    mon.flush()
    res = {
        "family": family,
        "corpus": corpus_name,
        "drive": drive,
        "seed": seed,
        "steps": steps,
        "default_coef": default_coef,
        "seconds": time.time() - t0,
        "coef": coefs,
        "lm_loss": losses,
        "layers": {
            lab: {
                "excess": excess[lab],
                "alarms": [a.to_dict() for a in m.alarms],
                "forecast": m.forecast_history(),
                "summary_forecast": m.forecast(),
                "variants": {name: rec[(lab, name)] for name in VARIANTS if (lab, name) in rec},
            }
            for lab, m in mon.monitors.items()
        },
    }
    mon.close()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res))
    tmp.replace(path)
    return path


def collapse_step(excess, ramp_start: int = 1000) -> int | None:
    """Independent criterion: the 20-step mean excess rising 0.3 above its median over steps
    500-1000 (from the ramp start on)."""
    e = np.asarray(excess, dtype=float)
    sm = np.convolve(e, np.ones(20) / 20, mode="full")[: e.size]  # trailing mean
    base = float(np.median(sm[500:1000]))
    hit = np.nonzero(sm[ramp_start:] >= base + 0.3)[0]
    return None if hit.size == 0 else int(hit[0] + ramp_start)


def ews_taus(excess, start: int, stop: int, every: int = 50) -> list[tuple[int, float, float]]:
    """The generic early-warning indicators of ``ewstools`` computed online: at every ``every``
    steps ``t`` in ``[start + 500, stop)``, on the max-load excess of steps ``start .. t`` (its
    recommended settings: Gaussian detrending with bandwidth 0.2, rolling window 0.25), the
    Kendall tau of the rolling variance and of the lag-1 autocorrelation. ``[(t, tau_var,
    tau_ac)]``."""
    import warnings

    import ewstools

    out = []
    for t in range(start + 500, stop, every):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ts = ewstools.TimeSeries(np.asarray(excess[start:t], dtype=float))
            ts.detrend(method="Gaussian", bandwidth=0.2)
            ts.compute_var(rolling_window=0.25)
            ts.compute_auto(rolling_window=0.25, lag=1)
            ts.compute_ktau()
        kt = ts.ktau
        out.append((t, float(kt.get("variance", np.nan)), float(kt.get("ac1", np.nan))))
    return out


def _ews_first(taus, thr: float):
    return next((t for t, v, a in taus if (v > thr or a > thr)), None)


def replay(log: Path) -> dict:
    """The run's log replayed through ``LayerMonitor`` at its defaults with the current code
    (the same alarms as online: diagnose's rule): ``{layer: (alarms, forecast history)}``."""
    from moebif.monitor import LayerMonitor, read_log

    out = {}
    for lab, lay in read_log(log).layers.items():
        m = LayerMonitor(lay.n_experts, top_k=lay.top_k, name=lab)
        m.update_many(lay.counts, lay.importance, lay.scores, lay.forces)
        out[lab] = ([a.to_dict() for a in m.alarms], m.forecast_history())
    return out


def report(out: Path) -> int:
    rows, healthy = [], []
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        now = replay(f.with_suffix(".jsonl"))
        for lab, L in r["layers"].items():
            L["alarms"], L["forecast"] = now[lab]
            alarms = [a for a in L["alarms"] if a["kind"] == "approaching-threshold"]
            col = collapse_step(L["excess"], 1000 if r["drive"].startswith("ramp") else 500)
            at1000 = [h for h in L["forecast"] if h["step"] <= 1000]
            a1000 = at1000[-1]["critical_coefficient"] if at1000 else None
            if r["drive"] in ("healthy", "default"):
                healthy.append((r, lab, col, L["alarms"]))
                continue
            first = next((a["step"] for a in alarms if a["step"] >= 1000), None)
            stop = col if col is not None else len(L["excess"])
            taus = ews_taus(L["excess"], 500, stop) if stop > 1000 else []
            lead = None if (first is None or col is None) else col - first
            knob = None
            if first is not None:
                msg = next(a["message"] for a in alarms if a["step"] == first)
                knob = msg.split("knob at collapse ")[-1].rstrip(")") if "knob" in msg else None
            rows.append(
                {
                    "run": f"{r['family']}/{r['corpus']}/{r['drive']}/s{r['seed']}",
                    "layer": lab,
                    "collapse": col,
                    "coef_at_collapse": None if col is None else r["coef"][col],
                    "alarm": first,
                    "lead": lead,
                    "lead_frac": None if lead is None or col is None else lead / (col - 1000),
                    "knob_forecast": knob,
                    "alpha_star_1000": a1000,
                    "_taus": taus,
                }
            )
    cols = "run layer collapse coef-at-collapse alarm lead lead/ramp knob-forecast alpha*@1000"
    print("| " + " | ".join(cols.split()) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print("| " + " | ".join(str(_fmt(v)) for k, v in x.items() if k != "_taus") + " |")
    col = [x for x in rows if x["collapse"] is not None]
    warned = [x for x in col if x["lead"] is not None and x["lead"] > 0]
    print(f"\ncollapsed layers: {len(col)}; warned strictly before: {len(warned)}")
    if warned:
        print(f"median lead fraction: {np.median([x['lead_frac'] for x in warned]):.2f}")
    print("\nhealthy runs: layer, independent collapse, alarms")
    null_tau = []
    for r, lab, c, al in healthy:
        kinds = [(a["step"], a["kind"]) for a in al]
        print(f"  {r['family']}/{r['corpus']}/{r['drive']} {lab}: collapse {c}; alarms {kinds}")
        taus = ews_taus(r["layers"][lab]["excess"], 500, len(r["layers"][lab]["excess"]))
        null_tau.append(max([max(v, a) for _, v, a in taus] + [-1.0]))
    # the generic indicators at a threshold with no false alarm on the healthy runs (the
    # monitor's false alarms are listed above), and at 0.7
    thr = max(null_tau) + 1e-9 if null_tau else 0.7
    print("\newstools (Kendall tau of rolling variance / lag-1 AC of the excess, warn when")
    print(f"either passes tau; tau* = {thr:.3f}: no warning in the healthy runs)")
    print("| run | layer | collapse | moebif lead | ews lead at tau* | ews lead at 0.7 |")
    print("|---|---|---|---|---|---|")
    for x in rows:
        if x["collapse"] is None:
            continue
        e1, e2 = _ews_first(x["_taus"], thr), _ews_first(x["_taus"], 0.7)
        l1 = None if e1 is None else x["collapse"] - e1
        l2 = None if e2 is None else x["collapse"] - e2
        print(
            f"| {x['run']} | {x['layer']} | {x['collapse']} | {_fmt(x['lead'])} | {_fmt(l1)} | "
            f"{_fmt(l2)} |"
        )
    return 0


def advise_report(out: Path, until: int = 1000) -> int:
    """``moebif advise --from-log`` on the ramped runs, from their first ``until`` (healthy)
    steps, against the coefficient at the independent collapse: ``alpha*`` in the three stacks'
    units and the relative error of the Hugging Face value."""
    from moebif.monitor.advice import advise_from_log

    print(f"advise --from-log from steps < {until} against the coefficient at collapse")
    print("| run | layer | coef at collapse | alpha* [95%] (HF) | error | Megatron | OLMo-core |")
    print("|---|---|---|---|---|---|---|")
    hits = total = 0
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        if not r["drive"].startswith("ramp"):
            continue
        res = advise_from_log(f.with_suffix(".jsonl"), until=until, lr=2e-3)
        for lab, L in r["layers"].items():
            col = collapse_step(L["excess"], 1000)
            a = res.layers[lab]
            if col is None or a.critical is None:
                continue
            c = r["coef"][col]
            err = abs(a.critical - c) / abs(c)
            total += 1
            hits += err <= 0.3
            print(
                f"| {r['family']}/{r['corpus']}/{r['drive']} | {lab} | {c:.3f} | "
                f"{a.critical:.3f} [{a.critical_lo:.3f}, {a.critical_hi:.3f}] | {err:.0%} | "
                f"{a.stacks['megatron']['critical']:.4f} | {a.stacks['olmo']['critical']:.4f} |"
            )
    print(f"\nwithin 30%: {hits} of {total}")
    return 0


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results/prediction"))
    ap.add_argument("--runs", nargs="*", default=[], help="family:corpus:drive[:seed] ...")
    ap.add_argument("--report", action="store_true")
    ap.add_argument(
        "--advise", action="store_true", help="advise --from-log on the first 1000 steps"
    )
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.report:
        return report(a.out)
    if a.advise:
        return advise_report(a.out)
    for spec in a.runs:
        parts = spec.split(":")
        if len(parts) not in (3, 4) or parts[2] not in DRIVES:
            print(f"study_prediction: error: --runs: bad spec {spec!r}", file=sys.stderr)
            return 2
        seed = int(parts[3]) if len(parts) == 4 else 0
        print(run(parts[0], parts[1], parts[2], seed, a.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
