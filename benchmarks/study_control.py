"""Real-training study of the closed-loop balancer (issue 21, "Real training"): tiny random-init
Hugging Face MoE models (2 layers, 8 experts, top-2) trained on CPU on byte-level text of
:func:`moebif.monitor.tiny.corpus`, AdamW lr 1e-3, batch 8 x 64 tokens.

Arms (same seed, same batches, same init):

- ``control``, ``control-ki05``, ``control-ki10``: :class:`moebif.control.RouterController`
  with ``k_i`` = 0.01, 0.05, 0.1 (``k_p = 0.1``; 0.1 is the default), aux loss off;
- ``default``: the family's Hugging Face default aux coefficient (Mixtral 1e-3, OLMoE 1e-2);
- ``aux0.01``: aux coefficient 1e-2 (for OLMoE the same run as ``default``: not recomputed);
- ``sign``: DeepSeek-V3's sign-updated selection bias, ``u = 1e-3``, aux loss off (the same
  selection hook as the controller, ``law="sign"``).

Perturbations (``--perturb``, ``--perturb-steps`` steps, on the ``control`` and ``default``
arms):

- ``flip``: the aux coefficient forced to -1 for 100 steps from 2/3 of the run (the controller's
  arm then has -1 where it had 0);
- ``skew``: a constant logit skew ``h`` on expert 0 of every router (added to the logits the
  router selects and weighs with) from 1/3 of the run on.

Metrics per run: MaxVio_batch (arXiv 2408.15664: ``max_i load_i / mean load - 1`` per batch,
per layer), median over the last 1000 steps (mean over layers); the final LM loss (mean of the
last 200 steps, the language-model part only); the max-load excess ``(max f - 1/N) / (1/k - 1/N)``
smoothed over 20 steps (flip: its rise over the pre-flip median); expert 0's relative load
``N f_0 - 1`` (skew); for the controller the bias range and the rerouted fraction (token-slots
whose expert the bias changed), and the bias' step-to-step change (chattering).

Resumable: one JSON per run in ``--out`` (atomic writes); a finished run is skipped. ``--report``
prints the tables. Run it niced, one run at a time:

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/study_control.py --out /work/study/control
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

FAMILIES = ("mixtral", "olmoe")
ARMS = ("control", "default", "aux0.01", "sign")
DEFAULT_AUX = {"mixtral": 1e-3, "olmoe": 1e-2, "qwen2_moe": 1e-3, "qwen3_moe": 1e-3}
SKEW_H = 1.0
# controller variants (arm name -> gains): "control" ran at the first gains tried (k_i = 0.01);
# "control-ki10" is the default ControlGains() since (k_i = 0.1, set by the flip on Mixtral)
CONTROL_GAINS = {
    "control": {"k_i": 0.01, "k_p": 0.1},
    "control-ki05": {"k_i": 0.05, "k_p": 0.1},
    "control-ki10": {"k_i": 0.1, "k_p": 0.1},
}


def _aux(family: str, arm: str) -> float:
    if arm == "default":
        return DEFAULT_AUX[family]
    if arm == "aux0.01":
        return 1e-2
    return 0.0


def run_name(family, arm, seed, corpus, perturb=None) -> str:
    p = f"-{perturb}" if perturb else ""
    return f"{family}-{arm}{p}-{corpus}-s{seed}"


def _skew_hook(h: float):
    """A forward hook on a softmax top-k router adding ``h`` to expert 0's logit: the selection
    and the weights follow (renormalised as the router does)."""
    import torch

    def hook(module, args, output):
        logits, weights, idx = output
        lg = logits.clone()
        lg[..., 0] += h
        p = torch.softmax(lg.float(), dim=-1)
        top, new = torch.topk(p, idx.shape[-1], dim=-1)
        if getattr(module, "norm_topk_prob", True):
            top = top / top.sum(-1, keepdim=True)
        return lg, top.to(weights.dtype), new.to(idx.dtype)

    return hook


def train(family, arm, seed, corpus, steps, perturb=None, gains=None) -> dict:
    import torch

    from moebif.control import RouterController
    from moebif.monitor.hooks import find_routers
    from moebif.monitor.tiny import corpus as get_corpus
    from moebif.monitor.tiny import text_batches, tiny_model

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = tiny_model(family, seed).train()
    aux0 = _aux(family, arm)
    routers = find_routers(model)
    ctl = None
    if arm in CONTROL_GAINS or arm == "sign":
        if gains is None and arm != "sign":
            gains = CONTROL_GAINS[arm]
        law = "sign" if arm == "sign" else "pi"
        ctl = RouterController(model, law=law, u=1e-3, gains=gains)
    flip = (2 * steps // 3, 2 * steps // 3 + 100) if perturb == "flip" else None
    skew_at = steps // 3 if perturb == "skew" else None
    counts = {lab: [] for lab in routers}
    cur = {}

    def counter(lab):
        def hook(mod, args, out):
            if mod.training and torch._C._current_graph_task_id() == -1:
                cur[lab] = torch.bincount(out[-1].reshape(-1), minlength=8).numpy()

        return hook

    for lab, mod in routers.items():  # registered last: sees the final (biased) selection
        mod.register_forward_hook(counter(lab))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lm_loss, bias_range, bias_step = [], [], []
    prev = None
    t0 = time.time()
    data = get_corpus(corpus)
    for i, x in enumerate(text_batches(steps, 8, 64, seed=seed, corpus=data)):
        if skew_at is not None and i == skew_at:
            for mod in routers.values():
                mod.register_forward_hook(_skew_hook(SKEW_H), prepend=True)
        coef = -1.0 if flip and flip[0] <= i < flip[1] else aux0
        model.router_aux_loss_coef = coef
        model.config.router_aux_loss_coef = coef
        out = model(input_ids=x, labels=x)
        lm = out.loss - coef * out.aux_loss if out.aux_loss is not None else out.loss
        lm_loss.append(float(lm.detach()))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if ctl is not None:
            b = ctl.step()
            arr = np.stack([b[lab] for lab in routers])
            bias_range.append(float((arr.max(1) - arr.min(1)).mean()))
            if prev is not None:
                bias_step.append(float(np.abs(arr - prev).mean()))
            prev = arr
        for lab in routers:
            counts[lab].append(cur[lab].tolist())
        if i % 500 == 0:
            print(f"  {family}/{arm}/{perturb} s{seed} step {i} {time.time() - t0:.0f}s "
                  f"lm {lm_loss[-1]:.3f}", flush=True)  # fmt: skip
    return {
        "family": family,
        "arm": arm,
        "seed": seed,
        "corpus": corpus,
        "perturb": perturb,
        "steps": steps,
        "aux": aux0,
        "flip": flip,
        "skew_at": skew_at,
        "skew_h": SKEW_H if perturb == "skew" else None,
        "seconds": time.time() - t0,
        "lm_loss": lm_loss,
        "counts": {k: v for k, v in counts.items()},
        "top_k": 2,
        "bias_range": bias_range,
        "bias_step": bias_step,
        "rerouted": None if ctl is None else {lab: ctl.rerouted_fraction(lab) for lab in routers},
        "final_bias": None if ctl is None else {lab: ctl.bias(lab).tolist() for lab in routers},
    }


def _write(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# metrics


def _smooth(x, w=20):
    return np.convolve(x, np.ones(w) / w, mode="same")


def metrics(run: dict) -> dict:
    out = {}
    k = run["top_k"]
    maxvio, exc_all, e0 = [], [], []
    for c in run["counts"].values():
        c = np.asarray(c, dtype=float)
        f = c / c.sum(1, keepdims=True)
        n = f.shape[1]
        maxvio.append(f.max(1) * n - 1.0)
        exc_all.append(_smooth((f.max(1) - 1.0 / n) / (1.0 / k - 1.0 / n)))
        e0.append(n * f[:, 0] - 1.0)
    maxvio = np.mean(maxvio, axis=0)
    out["maxvio_last1000"] = float(np.median(maxvio[-1000:]))
    out["lm_last200"] = float(np.mean(run["lm_loss"][-200:]))
    if run["bias_step"]:
        out["bias_step"] = float(np.mean(run["bias_step"][-1000:]))
        out["bias_range"] = float(np.mean(run["bias_range"][-1000:]))
    if run.get("rerouted"):
        out["rerouted"] = float(np.mean(list(run["rerouted"].values())))
    if run["flip"]:
        s, e = run["flip"]
        rises, held, after = [], [], []
        for exc in exc_all:
            base = float(np.median(exc[max(0, s - 500) : s]))
            rises.append(float(exc[s : e + 50].max()) - base)
            held.append(float(exc[s + 40 : e].mean()) - base)  # the pulse's last 60 steps
            after.append(float(exc[e + 20 : e + 120].mean()) - base)
        out["flip_rise"] = rises
        out["flip_held"] = held  # excess over the baseline while the pulse still pushes
        out["flip_after"] = after  # and in the 100 steps after it
    if run["skew_at"] is not None:
        s = run["skew_at"]
        out["skew_e0_before"] = [float(np.mean(x[max(0, s - 300) : s])) for x in e0]
        out["skew_e0_first100"] = [float(np.mean(x[s : s + 100])) for x in e0]
        out["skew_e0_last300"] = [float(np.mean(x[-300:])) for x in e0]
    return out


def _fmt(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} +- {np.std(vals, ddof=1):.3f} (n={len(vals)})"


def report(out: Path) -> int:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    rows: dict = {}
    for r in runs:
        m = metrics(r)
        key = (r["family"], r["arm"], r["perturb"] or "-", r["corpus"])
        rows.setdefault(key, []).append((r["seed"], m, r["seconds"]))
    print("| family | arm | perturbation | corpus | seeds | MaxVio_batch (median, last 1000) "
          "| LM loss (last 200) | bias step | bias range | rerouted |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows):
        ms = [m for _, m, _ in rows[key]]
        seeds = ",".join(str(s) for s, _, _ in rows[key])
        print(f"| {' | '.join(key)} | {seeds} | {_fmt([m['maxvio_last1000'] for m in ms])} | "
              f"{_fmt([m['lm_last200'] for m in ms])} | {_fmt([m.get('bias_step') for m in ms])} "
              f"| {_fmt([m.get('bias_range') for m in ms])} "
              f"| {_fmt([m.get('rerouted') for m in ms])} |")  # fmt: skip
    print()
    for key in sorted(rows):
        for seed, m, _ in rows[key]:
            if "flip_rise" in m:
                print(f"flip {key[0]}/{key[1]} s{seed}: excess rise per layer "
                      f"{np.round(m['flip_rise'], 3).tolist()}, held (pulse steps 40-100) "
                      f"{np.round(m['flip_held'], 3).tolist()}, after (100 steps) "
                      f"{np.round(m['flip_after'], 3).tolist()}")  # fmt: skip
            if "skew_e0_before" in m:
                print(f"skew {key[0]}/{key[1]} s{seed}: expert-0 relative load N f0 - 1 per layer: "
                      f"before {np.round(m['skew_e0_before'], 3).tolist()}, first 100 steps "
                      f"{np.round(m['skew_e0_first100'], 3).tolist()}, last 300 "
                      f"{np.round(m['skew_e0_last300'], 3).tolist()}")  # fmt: skip
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/work/study/control")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--corpus", default="python")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--perturb", default="", help="comma list of flip, skew (else main runs)")
    ap.add_argument("--perturb-steps", type=int, default=1500)
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.report:
        return report(out)
    perturbs = [p for p in a.perturb.split(",") if p]
    bad = [p for p in perturbs if p not in ("flip", "skew")]
    if bad:
        print(f"--perturb: unknown {', '.join(bad)}", file=sys.stderr)
        return 2
    jobs = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        for fam in a.families.split(","):
            for arm in a.arms.split(","):
                if perturbs:
                    if arm not in CONTROL_GAINS and arm != "default":
                        continue
                    jobs += [(fam, arm, seed, p, a.perturb_steps) for p in perturbs]
                elif not (arm == "aux0.01" and DEFAULT_AUX[fam] == 1e-2):
                    jobs.append((fam, arm, seed, None, a.steps))
    for fam, arm, seed, p, steps in jobs:
        path = out / f"{run_name(fam, arm, seed, a.corpus, p)}.json"
        if path.exists():
            continue
        print(f"run {path.name}", flush=True)
        _write(path, train(fam, arm, seed, a.corpus, steps, p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
