"""The loss-free bias in a tiny Hugging Face Mixtral trained on the Python standard library's text,
against the relay-controller prediction (docs/balancing.md, "Bridge to a real model").

Run: ``python examples/bias_bridge_mixtral.py [--rates 0.01,0.02] [--h 1] [--steps 150]
[--json OUT.json] [--plot STEM]`` (about 15 s a rate on one core; needs the torch and hf extras).
"""

from __future__ import annotations

import argparse
import json
import sys

from moebif._io import atomic_write_text
from moebif.experiments.bal_bridge import plot_bridge, run_bridge


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="0.01,0.02", help="bias rates u (logit units a step)")
    ap.add_argument("--h", type=float, default=1.0, help="skew on expert 0's selection logit")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--plot", default=None, metavar="STEM", help="write STEM.png and STEM.svg")
    a = ap.parse_args(argv)
    try:
        rates = tuple(float(x) for x in a.rates.split(","))
    except ValueError:
        ap.error(f"--rates: not a comma-separated list of numbers: {a.rates!r}")
    if any(u <= 0 for u in rates):
        ap.error("--rates: every rate must be > 0")
    res = run_bridge(rates=rates, h=a.h, warmup=a.warmup, steps=a.steps, seed=a.seed)
    print(f"tiny Mixtral (8 experts, top-2), stdlib text, skew h = {a.h:g} on expert 0")
    print(f"{'u':>7} {'t_half':>7} {'predicted':>13} {'final gap':>10} {'-h':>6} {'load0':>7}")
    for r in res["runs"]:
        lo, hi = r["t_half_predicted"]
        print(
            f"{r['u']:>7g} {r['t_half']:>7} {lo:>6.1f}..{hi:<6.1f} {r['final_gap']:>10.3f} "
            f"{-a.h:>6.2f} {r['load0_final']:>7.3f}"
        )
    if a.json:
        atomic_write_text(a.json, json.dumps(res) + "\n")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        from moebif.style import save_figure

        save_figure(plot_bridge(res), a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
