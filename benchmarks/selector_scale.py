"""Time and peak extra RSS of the cdpruner, scope and mmr selectors keeping 10% of N = 16,384 tokens, on the inputs
of benchmarks/test_bench_selectors.py (CLIP-like features d_v = 1024 through a LLaVA-1.5-shaped projector, d_l =
4096; scores = the embeddings' norms; cdpruner's prompt: 32 text tokens).

    OMP_NUM_THREADS=1 python benchmarks/selector_scale.py [--selectors cdpruner,scope,mmr] [--repeats 2]

Threads: whatever torch uses in this process (set OMP_NUM_THREADS; on shared cores use 1, docs/speed.md).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_inputs import image_tokens, llava_projector  # noqa: E402
from measure import timed  # noqa: E402

from zoprune import Context  # noqa: E402
from zoprune.registry import get_registry  # noqa: E402


parser = argparse.ArgumentParser()
parser.add_argument("--selectors", default="cdpruner,scope,mmr")
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--n", type=int, default=16384)
args = parser.parse_args()
n = args.n
tokens = image_tokens(n, llava_projector())  # the inputs of benchmarks/conftest.py
scores = tokens.embeddings.norm(dim=-1)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={n}, k={n // 10}")
for name in args.selectors.split(","):
    selector = get_registry().get("selector", name).cls()
    for _ in range(args.repeats):
        with torch.no_grad():
            kept, dt, peak = timed(lambda: selector.select(scores, tokens, n // 10,
                                                           Context(torch.Generator().manual_seed(0))))
        print(f"{name:9s}: {dt:.2f} s, peak extra RSS {peak:.0f} MB", flush=True)
