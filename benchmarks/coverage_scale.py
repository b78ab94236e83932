"""Time and peak extra RSS of coverage_select (and divprune_select) keeping 10% of N = 16,384 tokens, d = 4096 and 3584.

    OMP_NUM_THREADS=1 python benchmarks/coverage_scale.py [--dense] [--divprune]

Threads: whatever torch uses in this process (set OMP_NUM_THREADS; the selector never changes it). On cores shared
with other work use 1 thread: every multi-threaded op then waits for a core (docs/speed.md). ``--dense`` also times
the one-pass-per-pick reference loop (~30 s per case) and checks that the picks are identical; ``--divprune`` also
times DivPrune (its first pick, then the same greedy with equal sensitivities).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "plugins" / "selectors"))
from measure import timed  # noqa: E402
from test_coverage_scale import vlm_like  # noqa: E402
from zoprune_plugins.selectors.coverage import coverage_select, coverage_select_dense  # noqa: E402
from zoprune_plugins.selectors.divprune import divprune_select  # noqa: E402


parser = argparse.ArgumentParser()
parser.add_argument("--dense", action="store_true")
parser.add_argument("--divprune", action="store_true")
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--widths", default="4096,3584")
args = parser.parse_args()
n = 16384
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for d in (int(w) for w in args.widths.split(",")):
    for kind in ("vlm", "gaussian"):
        g = torch.Generator().manual_seed(0)
        z = vlm_like(n, d, 0, clusters=64) if kind == "vlm" else torch.randn(n, d, generator=g)  # (N, d) fp32
        s = torch.rand(n, generator=g)
        selectors = {"coverage": lambda: coverage_select(s, z, n // 10)}
        if args.divprune:
            selectors["divprune"] = lambda: divprune_select(z, n // 10)
        for name, select in selectors.items():
            for rep in range(args.repeats):
                picks, dt, peak = timed(select)
                print(f"{name:8s} N={n} d={d} {kind:8s} k={n // 10}: {dt:.2f} s, "
                      f"peak extra RSS {peak:.0f} MB", flush=True)
            if name == "coverage":
                kept = picks
        if args.dense:
            t = time.perf_counter()
            same = torch.equal(coverage_select_dense(s, z, n // 10), kept)
            print(f"    dense loop: {time.perf_counter() - t:.1f} s, identical picks: {same}", flush=True)
