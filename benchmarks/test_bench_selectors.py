"""Selectors keeping 10% of N = 576, 2880, 16384 projected tokens (d = 4096; a square grid at 576 and 16384)."""

import pytest
import torch
from bench_inputs import SIZES

from zoprune import Context, Merge
from zoprune.registry import get_registry

SELECTORS = ["coverage", "divprune", "topk", "scope", "vispruner", "mmr", "cdpruner", "holov", "pool"]


@pytest.mark.parametrize("name", SELECTORS)
@pytest.mark.parametrize("n", SIZES)
def test_select_ten_percent(benchmark, image_tokens, name, n):
    tokens = image_tokens(n)
    selector = get_registry().get("selector", name).cls()
    scores = tokens.embeddings.norm(dim=-1)
    k = n // 10
    kept = benchmark.pedantic(selector.select, args=(scores, tokens, k, Context(torch.Generator().manual_seed(0))),
                              rounds=2, iterations=1)
    if isinstance(kept, Merge):  # pool builds all k tokens
        assert kept.kept.numel() + kept.embeddings.shape[0] == k
    else:
        assert kept.shape == (k,)
