"""Does Adam's elementwise normalisation move alpha* as the aux coefficient moves?

The force probe (:mod:`moebif.monitor.force_probe`) normalises both force parts by the second
moment ``v = E[(g_LM + alpha g_aux)^2]`` of the router weight's total gradient, which depends on
the coefficient ``alpha`` in force. Hypothesis: that dependence is what moves ``alpha*`` when the
coefficient is ramped, and the collapse threshold is the fixed point ``alpha' = alpha*(alpha')``.

:class:`GridProbe` (a :class:`~moebif.monitor.force_probe.ForceProbe` beside the monitor's own, on
the same backward-pass data) keeps the three elementwise second moments ``v_LL = E[g_LM^2]``,
``v_LA = E[g_LM g_aux]``, ``v_AA = E[g_aux^2]`` (EMAs with Adam's ``beta2``, bias-corrected;
``g_aux`` the aux weight gradient per unit coefficient at the pooled fractions, ``g_LM`` the total
minus ``alpha g_aux``) and, for every hypothetical coefficient ``alpha'`` of a grid, normalises
with ``1 / (sqrt(v_LL + 2 alpha' v_LA + alpha'^2 v_AA) + eps)``: the second moment Adam would hold
had the coefficient been ``alpha'`` all along, with the same gradients. Per ``alpha'`` the
language model's step and the aux step's response to the shock are projected on the shock exactly
as the probe does (its own drive EMA per ``alpha'``), and fed to a
:class:`~moebif.monitor.forces.ForceStats` (50-step segments, last 20): ``alpha*(alpha')``. The
grid probe also keeps the ordinary ``alpha*`` (the actual ``v``), which must equal the monitor's.

Training as :mod:`study_prediction` (same model, optimiser, batches, seed, ``ramp025`` drive), so
the collapse steps must match ``/work/study/pred``. The prediction read at step 1000: the largest
``alpha'`` where ``alpha' - alpha*(alpha')`` changes sign from + (above) to - (below), linearly
interpolated between grid points.

Usage: ``python benchmarks/study_adam_alpha.py --out DIR --runs mixtral:licenses ...`` then
``--report`` (``--pred DIR`` the study_prediction outputs for the sanity check).

Results (ramp025, seed 0, 2000 steps, ``/work/study/adam``; collapse steps identical to
``/work/study/pred`` in all 8 layers). ``alpha*`` columns read at step 1000 (window: steps 0-1000):
"online" the grid probe's ordinary ``alpha*`` (actual ``v``; equal to the pred runs' online
forecast), "replay" the log replayed through ``LayerMonitor`` (its window at "1000" sits ~100
steps later: it matches the online value at 1100), "fixed pt" the ``alpha' = alpha*(alpha')``
crossing; relative errors against the collapse coefficient.

==================  =====  ========  =========  ========  =========  =========  ==========
run                 layer  collapse  coef       online    replay     fixed pt   err online/replay/fp
==================  =====  ========  =========  ========  =========  =========  ==========
granitemoe/lic.     0      1651      -0.0746    -0.0323   -0.065     -0.0299    0.57/0.13/0.60
granitemoe/lic.     1      1725      -0.0843    -0.0124   -0.0447    -0.0140    0.85/0.47/0.83
mixtral/licenses    0      1695      -0.0804    -0.0486   -0.0786    -0.0517    0.40/0.02/0.36
mixtral/licenses    1      1513      -0.0567    -0.0055   -0.0101    -0.0065    0.90/0.82/0.89
olmoe/pydoc         0      1681      -0.0785    -0.0538   -0.0887    -0.0559    0.31/0.13/0.29
olmoe/pydoc         1      1650      -0.0745    -0.0186   -0.0401    -0.0195    0.75/0.46/0.74
qwen3_moe/pydoc     0      1601      -0.0681    -0.0672   -0.113     -0.0711    0.01/0.66/0.04
qwen3_moe/pydoc     1      1521      -0.0577    -0.0157   -0.0243    -0.0162    0.73/0.58/0.72
==================  =====  ========  =========  ========  =========  =========  ==========

Within 30%: online 1/8, replay 3/8, fixed point 2/8. The hypothesis does not hold:

- ``alpha*(alpha')`` at step 1000 is nearly flat over ``alpha'`` in [-0.3, 0.05]: layer 1 varies
  by <= 15% (e.g. mixtral -0.0062 .. -0.0072), layer 0 by <= 30% (mixtral -0.047 .. -0.063;
  granite layer 0 only at the grid's ends, -0.56 at -0.30 and -0.011 at +0.05), so
  the fixed point is ``alpha*`` itself within ~10%. The reason: at step 1000 the median over the
  weight's elements of ``v_AA / v_LL`` is 8-23 (``v_LA / v_LL`` 0.05-0.2), so over the range the
  ramp crosses before collapse (``|alpha'| <= 0.085``) ``alpha'^2 v_AA`` changes ``v`` by <= 17%:
  Adam's normalisation is the language model's gradient's, nearly independent of the coefficient.
- During the ramp, ``alpha*(t)`` evaluated under the normalisation of a constant 0.01 equals the
  one under the coefficient in force within 1-5% (e.g. mixtral layer 1 at t=1600: -0.0230 vs
  -0.0237): the movement of ``alpha*`` does not come from the normalisation.
- The movement is there in the healthy runs too (constant 0.01; ``/work/study/pred``, online
  forecast): mixtral layer 1 -0.0055 (1000), -0.0149 (1200), -0.0185 (1400) healthy against
  -0.0055, -0.0157, -0.0172 on the ramp; qwen3 layer 1 -0.0157, -0.0441, -0.0509 against -0.0157,
  -0.0443, -0.0488; granite layer 1 -0.0124, -0.0531, -0.0586 against -0.0124, -0.0499, -0.0588.
  Up to ~1600 it is the estimator's 1000-step window shedding the first ~200 steps of training
  (which pull alpha* toward 0: the replay, whose window misses ~the first 100 steps, already
  reads 1.2-3.6 times the online value at step 1000), not a response to the coefficient.
- Pointer, not a prediction available at step 1000 of these runs: the healthy runs' online
  alpha* at 1600 (window 600-1600, coefficient 0.01) is within 30% of the ramp's collapse
  coefficient in 5/8 layers (granite 0.05/0.26, mixtral 0.12/0.62, olmoe 0.22/0.40, qwen3
  0.68/0.02 for layers 0/1): a window free of the early transient is the next thing to test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_prediction import collapse_step, replay, schedule  # noqa: E402

GRID = np.round(np.linspace(-0.30, 0.05, 36), 4)  # step 0.01
READ_AT = (1000, 1200, 1400, 1600, 1800)


def _grid_probe_class():
    import torch

    from moebif.monitor.force_probe import BETA2, DRIVE_RATE, EPS, SHOCK_RATE, ForceProbe
    from moebif.monitor.forces import aux_logit_gradient

    class GridProbe(ForceProbe):
        """ForceProbe (shock "loads", mean input "batch", Adam) that also evaluates the forces
        under the second moment of every hypothetical coefficient of ``grid``. ``out`` after
        each backward: ``(len(grid) + 1, 5)`` sums, row 0 the ordinary probe (actual ``v``)."""

        def __init__(self, *a, grid, **kw):
            super().__init__(*a, **kw)
            self.grid = torch.as_tensor(np.asarray(grid), dtype=torch.float32)
            self._m = None  # (3, N, d): v_LL, v_LA, v_AA
            self._tm = 0
            self._drives = None  # (G, N)
            self.out = torch.zeros(len(grid) + 1, 5, dtype=torch.float64)

        def _backward(self, g, z, x, alpha) -> None:
            p = torch.softmax(z.float(), dim=-1)
            F, rows = self.pool()
            xf = x.float()
            c = self.counts.float()
            tokens = c.sum() / self.k
            f = c / c.sum().clamp_min(1.0)
            if self._ref is None:
                self._ref = f.clone()
            d = f - self._ref
            self._ref.add_(d, alpha=SHOCK_RATE)
            fr = torch.stack([F, d * (self.k * tokens / rows)])
            g3 = torch.cat([g.float()[None], aux_logit_gradient(p[None], fr[:, None, :], rows)])
            w3 = g3.transpose(1, 2) @ xf  # (3, N, d)
            xbar = xf.mean(0)
            dd = (d * d).sum()
            # the ordinary probe: the actual second moment of the total gradient
            scale = 1.0 / (self._second_moment(w3[0]).sqrt() + EPS)
            dz = -(torch.stack([w3[0] - alpha * w3[1], w3[2]]) * scale) @ xbar
            dz = dz - dz.mean(1, keepdim=True)
            if self._drive is None:
                self._drive = dz[0].clone()
            lm = dz[0] - self._drive
            self._drive.add_(dz[0] - self._drive, alpha=DRIVE_RATE)
            self.out[0] = torch.stack(
                [(lm * d).sum(), (dz[1] * d).sum(), dd, torch.tensor(1.0), torch.tensor(alpha)]
            ).double()
            # the three second moments, and the forces under each hypothetical coefficient
            g_lm, g_aux = w3[0] - alpha * w3[1], w3[1]
            mom = torch.stack([g_lm * g_lm, g_lm * g_aux, g_aux * g_aux])
            self._tm += 1
            if self._m is None:
                self._m = torch.zeros_like(mom)
            self._m.mul_(BETA2).add_(mom, alpha=1.0 - BETA2)
            m = self._m / (1.0 - BETA2**self._tm)
            a = self.grid[:, None, None]
            v = (m[0][None] + 2.0 * a * m[1][None] + a * a * m[2][None]).clamp_min(0.0)
            sc = 1.0 / (v.sqrt() + EPS)  # (G, N, d)
            dz_lm = -(g_lm[None] * sc) @ xbar  # (G, N)
            dz_ax = -(w3[2][None] * sc) @ xbar
            dz_lm = dz_lm - dz_lm.mean(1, keepdim=True)
            dz_ax = dz_ax - dz_ax.mean(1, keepdim=True)
            if self._drives is None:
                self._drives = dz_lm.clone()
            lmg = dz_lm - self._drives
            self._drives.add_(dz_lm - self._drives, alpha=DRIVE_RATE)
            G = len(self.grid)
            self.out[1:, 0] = (lmg @ d).double()
            self.out[1:, 1] = (dz_ax @ d).double()
            self.out[1:, 2] = float(dd)
            self.out[1:, 3] = 1.0
            self.out[1:, 4] = self.grid.double()
            assert self.out.shape[0] == G + 1

    return GridProbe


def run(
    family: str, corpus_name: str, seed: int, out: Path, drive: str = "ramp025", stop: int = 0
) -> Path:
    import torch

    from moebif.monitor.forces import ForceStats
    from moebif.monitor.hooks import RouterMonitor, _first_scores, _tensors
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
    if stop > 0:  # the collapses all come before step 2000: the rest of the ramp is not needed
        steps = min(steps, stop)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    log = out / (path.stem + ".jsonl")
    if log.exists():
        log.unlink()
    mon = RouterMonitor(model, log=log)
    GridProbe = _grid_probe_class()
    probes, stats, est, moments = {}, {}, {}, {}
    for lab, r in mon._routes.items():
        if r.probe is None:
            continue
        pr = GridProbe(
            r.module, r.n, r.k, torch.zeros(5, dtype=torch.float64), r.buf[2 : r.n + 2],
            mon._pool_for(r), r.probe.coefficient, grid=GRID,
        )  # fmt: skip
        probes[lab] = pr
        stats[lab] = [ForceStats() for _ in range(len(GRID) + 1)]
        est[lab] = []
        moments[lab] = []

        def hook(module, args, output, pr=pr, n=r.n):
            if module.training:
                pr.forward(args, _first_scores(_tensors(output), n))

        r.module.register_forward_hook(hook)
    data = corpus(corpus_name)
    coefs, losses, excess = [], [], {lab: [] for lab in mon.monitors}
    t0 = time.time()
    for i, x in enumerate(text_batches(steps, 8, 64, seed=seed, corpus=data)):
        c = coef(i)
        model.router_aux_loss_coef = c
        outp = model(input_ids=x, labels=x)
        aux = outp.aux_loss if outp.aux_loss is not None else 0.0
        lm = float((outp.loss - c * aux).detach()) if torch.is_tensor(aux) else float(outp.loss)
        for pr in probes.values():
            pr.out.zero_()
        outp.loss.backward()
        for lab, pr in probes.items():
            if pr.error is not None:
                raise RuntimeError(f"{lab}: grid probe: {pr.error}") from pr.error
            vals = pr.out.numpy()
            closed = False
            for st, v in zip(stats[lab], vals, strict=True):
                closed = st.push(v) or closed
            if closed:
                e = [st.estimate().critical_coefficient for st in stats[lab]]
                est[lab].append([i + 1, c, *e])
            if i + 1 in READ_AT and pr._m is not None:  # how much alpha' can move v at all
                m = pr._m.double()
                aa, la = m[2] / m[0].clamp_min(1e-30), m[1] / m[0].clamp_min(1e-30)
                moments[lab].append([i + 1, float(aa.median()), float(la.median())])
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
        "seconds": time.time() - t0,
        "grid": GRID.tolist(),
        "coef": coefs,
        "lm_loss": losses,
        "layers": {
            lab: {
                "excess": excess[lab],
                "forecast": m.forecast_history(),
                # rows: [step, coef, ordinary alpha*, alpha*(grid[0]), ...] every 50 steps
                "grid_estimates": est.get(lab, []),
                # [step, median v_AA / v_LL, median v_LA / v_LL] over the weight's elements
                "moments": moments.get(lab, []),
            }
            for lab, m in mon.monitors.items()
        },
    }
    mon.close()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, allow_nan=True))
    tmp.replace(path)
    return path


def fixed_point(grid, crit) -> float | None:
    """The largest ``alpha'`` where ``h = alpha' - alpha*(alpha')`` goes from > 0 (above) to
    <= 0 (below), linearly interpolated; None without such a crossing."""
    g = np.asarray(grid, dtype=float)
    h = g - np.asarray(crit, dtype=float)
    for j in range(len(g) - 1, 0, -1):
        hi, lo = h[j], h[j - 1]
        if np.isfinite(hi) and np.isfinite(lo) and hi > 0 >= lo:
            return float(g[j - 1] + (g[j] - g[j - 1]) * (0 - lo) / (hi - lo))
    return None


def _row_at(rows, step):
    at = [r for r in rows if r[0] <= step]
    return at[-1] if at else None


def report(out: Path, pred: Path | None) -> int:
    print("| run | layer | collapse (pred run) | coef at collapse | alpha*@1000 (monitor) | "
          "alpha*@1000 (grid probe, actual v) | fixed point @1000 | rel err alpha* | "
          "rel err fixed point |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    curves = []
    n_ok = {"alpha*": 0, "fixed": 0, "n": 0}
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        grid = np.asarray(r["grid"])
        now = replay(f.with_suffix(".jsonl"))
        pr = None
        if pred is not None and (pred / f.name).exists():
            pr = json.loads((pred / f.name).read_text())
        for lab, L in r["layers"].items():
            col = collapse_step(L["excess"])
            col_p = None if pr is None else collapse_step(pr["layers"][lab]["excess"])
            cc = None if col is None else r["coef"][col]
            fh = [h for h in now[lab][1] if h["step"] <= 1000]
            a_mon = fh[-1]["critical_coefficient"] if fh else None
            row = _row_at(L["grid_estimates"], 1000)
            a_ord = row[2] if row else None
            crit = np.asarray(row[3:], dtype=float) if row else None
            fp = fixed_point(grid, crit) if row else None

            def rel(x, cc=cc):
                return None if x is None or cc is None else abs(x - cc) / abs(cc)

            ra, rf = rel(a_mon), rel(fp)
            if cc is not None:
                n_ok["n"] += 1
                n_ok["alpha*"] += ra is not None and ra <= 0.3
                n_ok["fixed"] += rf is not None and rf <= 0.3
            print(
                f"| {r['family']}/{r['corpus']} | {lab.split('.')[2]} | {col} ({col_p}) | "
                f"{_f(cc)} | {_f(a_mon)} | {_f(a_ord)} | {_f(fp)} | {_f(ra)} | {_f(rf)} |"
            )
            # the live alpha*(t) (replayed monitor) against alpha*(alpha' = coef(t)) read at 1000
            live = []
            for t in READ_AT:
                h = [x for x in now[lab][1] if x["step"] <= t]
                a_t = h[-1]["critical_coefficient"] if h else None
                c_t = r["coef"][t - 1]
                pred_t = float(np.interp(c_t, grid, crit)) if row else None
                rt = _row_at(L["grid_estimates"], t)
                # at time t: alpha* under the normalisation of a constant 0.01 (the state's own
                # movement) and under that of the coefficient in force
                g_t = np.asarray(rt[3:], dtype=float) if rt else None
                a01 = float(np.interp(0.01, grid, g_t)) if rt else None
                act = float(np.interp(c_t, grid, g_t)) if rt else None
                live.append((t, c_t, a_t, pred_t, rt[2] if rt else None, a01, act))
            curves.append((f"{r['family']} {lab.split('.')[2]}", grid, crit, live))
    print(
        f"\nwithin 30% of the collapse coefficient: ordinary alpha*@1000 {n_ok['alpha*']}/"
        f"{n_ok['n']}, fixed point @1000 {n_ok['fixed']}/{n_ok['n']}"
    )
    print("\nalpha*(alpha') read at step 1000 (grid -0.30 .. 0.05):")
    for name, grid, crit, _ in curves:
        if crit is None:
            continue
        sel = [j for j, g in enumerate(grid) if round(g * 100) % 5 == 0]
        print(f"  {name}: " + " ".join(f"{grid[j]:+.2f}:{crit[j]:+.4f}" for j in sel))
    print("\nlive alpha*(t) (replayed monitor / grid probe actual v) vs alpha*(coef(t))@1000:")
    for name, _, _, live in curves:
        print(
            f"  {name}: "
            + "; ".join(
                f"t={t} c={c:+.3f} live={_f(a)}/{_f(o)} grid@1000={_f(p)} "
                f"now(0.01)={_f(a01)} now(c)={_f(act)}"
                for t, c, a, p, o, a01, act in live
            )
        )
    print("\nmedian over the weight's elements of v_AA / v_LL and v_LA / v_LL (step: values):")
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        for lab, L in r["layers"].items():
            if L.get("moments"):
                print(
                    f"  {r['family']} {lab.split('.')[2]}: "
                    + "; ".join(f"{t}: {aa:.3g}, {la:.3g}" for t, aa, la in L["moments"])
                )
    return 0


def _f(v):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results/adam-alpha"))
    ap.add_argument("--pred", type=Path, default=None, help="study_prediction outputs")
    ap.add_argument("--runs", nargs="*", default=[], help="family:corpus[:seed] ...")
    ap.add_argument("--stop", type=int, default=2000, help="train this many steps (0: all)")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.report:
        return report(a.out, a.pred)
    for spec in a.runs:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            print(f"study_adam_alpha: error: --runs: bad spec {spec!r}", file=sys.stderr)
            return 2
        seed = int(parts[2]) if len(parts) == 3 else 0
        print(run(parts[0], parts[1], seed, a.out, stop=a.stop), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
