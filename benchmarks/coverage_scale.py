"""Time and peak extra RSS of coverage_select keeping 10% of N = 16,384 tokens, d = 4096 and 3584.

    python benchmarks/coverage_scale.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "plugins" / "selectors"))
import gc
import time

import torch
from test_coverage_scale import vlm_like
from zoprune_plugins.selectors.coverage import coverage_select




def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024


n = 16384
for d in (4096, 3584):
    for kind in ("vlm", "gaussian"):
        g = torch.Generator().manual_seed(0)
        z = vlm_like(n, d, 0, clusters=64) if kind == "vlm" else torch.randn(n, d, generator=g)
        s = torch.rand(n, generator=g)
        for rep in range(2):
            gc.collect()
            open("/proc/self/clear_refs", "w").write("5")
            base = rss("VmRSS")
            t = time.perf_counter()
            coverage_select(s, z, n // 10)
            dt = time.perf_counter() - t
            print(f"N={n} d={d} {kind:8s} k={n//10}: {dt:.2f} s, peak extra RSS {rss('VmHWM') - base:.0f} MB", flush=True)
