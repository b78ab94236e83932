"""Cost and agreement of the ZO scorer's paths and the closed form at LLaVA-1.5-7B projector shapes.

    python benchmarks/compare_scorers.py [--directions 64] [--tokens 576] [--sketch 256,64] [--no-black-box]

Random weights (nn.Linear's default init) in the shapes 1024 -> 4096 -> 4096 and CLIP-like stand-in features
(``bench_inputs.features``). Prints GFLOPs (counted by torch's FlopCounterMode), seconds (all in one run, interleaved),
ratios to the black-box estimator, the largest relative difference structured vs black box, and the Spearman
correlation with exact ZO (seed 0) of: exact ZO with other directions (seed 1, how much the estimator moves with
its own randomness), the structured path with a bf16 second-layer product, jacobian_norm and the sketched ZO
(``output_sketch`` r, same directions).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from bench_inputs import features
from zoprune_plugins.scorers import jacobian_norm
from zoprune_plugins.scorers.zo_sensitivity import (
    black_box_sensitivity,
    output_sketch,
    structured_sensitivity,
    unit_directions,
)

from zoprune.projector import mlp_parts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--directions", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sketch", default="", help="comma-separated r of output_sketch to compare")
    parser.add_argument("--no-black-box", action="store_true", help="skip the slowest path")
    args = parser.parse_args()
    torch.manual_seed(0)
    projector = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(),
                                    torch.nn.Linear(4096, 4096)).eval()
    parts = mlp_parts(projector)
    x = features(args.tokens)
    generator = torch.Generator().manual_seed(0)
    u = unit_directions(args.directions, 1024, generator, torch.float32, torch.device("cpu"))
    after_directions = generator.get_state()  # the scorer draws the sketch right after the directions
    other_u = unit_directions(args.directions, 1024, torch.Generator().manual_seed(1), torch.float32,
                              torch.device("cpu"))
    cap = 256 * 2**20
    paths = {
        "black_box": lambda: black_box_sensitivity(x, projector, u, 0.01, 16, cap),
        "structured": lambda: structured_sensitivity(x, parts, u, 0.01, 16, cap),
        # the exact estimator with other directions: how much ZO itself moves with its seed
        "structured seed 1": lambda: structured_sensitivity(x, parts, other_u, 0.01, 16, cap),
        # what product_dtype 'auto' does on a bf16 model (here W2 is rounded to bf16 too: a harder case)
        "structured bf16": lambda: structured_sensitivity(x, parts, u, 0.01, 16, cap,
                                                          product_dtype=torch.bfloat16),
        "jacobian_norm": lambda: jacobian_norm.jacobian_norm_scores(x, parts),
    }
    if args.no_black_box:
        del paths["black_box"]
    for r in (int(v) for v in args.sketch.split(",") if v.strip()):
        def sketched(r=r):
            g = torch.Generator()
            g.set_state(after_directions)
            # the sketch is drawn per image, so its cost is part of the path
            return structured_sensitivity(x, parts, u, 0.01, 16, cap, output_sketch(r, 4096, g, torch.float32,
                                                                                     torch.device("cpu")))
        paths[f"sketch r={r}"] = sketched
    with torch.no_grad():
        jacobian_norm.clear_cache()
        start = time.perf_counter()
        jacobian_norm.gram_kernel(parts)
        kernel_s = time.perf_counter() - start
        with FlopCounterMode(display=False) as counter:
            jacobian_norm.clear_cache()
            jacobian_norm.gram_kernel(parts)
        kernel_gflop = counter.get_total_flops() / 1e9
        gflop, seconds, scores = {}, {name: [] for name in paths}, {}
        for name, fn in paths.items():
            with FlopCounterMode(display=False) as counter:
                fn()
            gflop[name] = counter.get_total_flops() / 1e9
        for _ in range(args.repeats):
            for name, fn in paths.items():
                start = time.perf_counter()
                scores[name] = fn()
                seconds[name].append(time.perf_counter() - start)
    print(f"N = {args.tokens}, m = {args.directions}, threads = {torch.get_num_threads()}")
    base = "black_box" if "black_box" in paths else "structured"
    base_f, base_s = gflop[base], min(seconds[base])
    for name in paths:
        s = min(seconds[name])
        print(f"{name:17s} {gflop[name]:9.1f} GFLOP ({base_f / gflop[name]:6.1f}x fewer than {base})  {s:7.2f} s "
              f"({base_s / s:6.1f}x faster)  runs {[round(t, 2) for t in seconds[name]]}")
    print(f"jacobian_norm K, once per projector: {kernel_gflop:.1f} GFLOP, {kernel_s:.2f} s")
    st = scores["structured"]
    if "black_box" in scores:
        bb = scores["black_box"]
        print(f"structured vs black box: max relative difference {((st - bb).abs() / bb.abs()).max():.2e}, "
              f"Spearman {spearmanr(st, bb)[0]:.6f}")
    for name in paths:
        if name not in ("black_box", "structured"):
            rel = ((scores[name] - st).abs() / st.abs()).max()
            print(f"Spearman {name} vs exact ZO (m = {args.directions}): {spearmanr(scores[name], st)[0]:.4f}"
                  f" (max relative difference {rel:.2e})")


if __name__ == "__main__":
    main()
