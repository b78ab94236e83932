"""Shapes and stand-in inputs shared by the benchmarks."""

import torch

SIZES = [576, 2880, 16384]  # LLaVA-1.5, LLaVA-NeXT AnyRes, video / high resolution


def features(n: int, d_v: int = 1024, seed: int = 0) -> torch.Tensor:
    """CLIP-like stand-in: a shared offset, varied token scales, a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_v, generator=g) + 0.5 * torch.randn(d_v, generator=g)
    x[:, :4] *= 8
    return x * torch.exp(0.3 * torch.randn(n, 1, generator=g))
