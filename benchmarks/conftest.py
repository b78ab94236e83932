"""Shared inputs of the speed benchmarks: LLaVA-1.5-shaped projector and stand-in features at several N.

Run: ``python -m pytest benchmarks --benchmark-only -p no:cacheprovider`` (the default ``pytest`` run only collects
``tests/`` and skips benchmarks).
"""

import math

import pytest
import torch
from bench_inputs import features
from torch import nn

from zoprune import ImageTokens


@pytest.fixture(scope="session")
def projector():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096)).eval()


@pytest.fixture(scope="session")
def image_tokens(projector):
    cache = {}

    def make(n: int) -> ImageTokens:
        if n not in cache:
            x = features(n)
            with torch.no_grad():
                z = torch.cat([projector(b) for b in x.split(2048)])
            # cdpruner's prompt: 32 text tokens in the embedding space (LLaVA-1.5 prompts hold ~30-60)
            text = torch.randn(32, z.shape[1], generator=torch.Generator().manual_seed(1)) * z.std() + z.mean(dim=0)
            side = math.isqrt(n)  # a square patch grid where N is one (576, 16384), as LLaVA's; none for 2880
            cache[n] = ImageTokens(features=x, embeddings=z, model_embeddings=z, projector=projector, sample=0,
                                   image=0, grid=(side, side) if side * side == n else None,
                                   extras={"text_embeddings": text})
        return cache[n]

    return make
