"""Time and peak extra RSS of the cdpruner, scope and mmr selectors keeping 10% of N = 16,384 tokens, on the inputs
of benchmarks/test_bench_selectors.py (CLIP-like features d_v = 1024 through a LLaVA-1.5-shaped projector, d_l =
4096; scores = the embeddings' norms; cdpruner's prompt: 32 text tokens).

    OMP_NUM_THREADS=1 python benchmarks/selector_scale.py [--selectors cdpruner,scope,mmr] [--repeats 2]

Threads: whatever torch uses in this process (set OMP_NUM_THREADS; on shared cores use 1, docs/speed.md).
"""
import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_inputs import features  # noqa: E402

from zoprune import Context, ImageTokens  # noqa: E402
from zoprune.registry import get_registry  # noqa: E402


def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024


parser = argparse.ArgumentParser()
parser.add_argument("--selectors", default="cdpruner,scope,mmr")
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--n", type=int, default=16384)
args = parser.parse_args()
n = args.n
torch.manual_seed(0)  # the projector of benchmarks/conftest.py
projector = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 4096)).eval()
with torch.no_grad():
    x = features(n)
    z = torch.cat([projector(b) for b in x.split(2048)])
    text = torch.randn(32, z.shape[1], generator=torch.Generator().manual_seed(1)) * z.std() + z.mean(dim=0)
tokens = ImageTokens(features=x, embeddings=z, model_embeddings=z, projector=projector, sample=0, image=0,
                     extras={"text_embeddings": text})
scores = z.norm(dim=-1)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={n}, k={n // 10}")
for name in args.selectors.split(","):
    selector = get_registry().get("selector", name).cls()
    for _ in range(args.repeats):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the RSS high-water mark
        base = rss("VmRSS")
        t = time.perf_counter()
        with torch.no_grad():
            kept = selector.select(scores, tokens, n // 10, Context(torch.Generator().manual_seed(0)))
        dt = time.perf_counter() - t
        print(f"{name:9s}: {dt:.2f} s, peak extra RSS {rss('VmHWM') - base:.0f} MB", flush=True)
