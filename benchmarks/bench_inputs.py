"""Shapes and stand-in inputs shared by the benchmarks."""

import math

import torch
from torch import nn

from zoprune import ImageTokens

SIZES = [576, 2880, 16384]  # LLaVA-1.5, LLaVA-NeXT AnyRes, video / high resolution


def features(n: int, d_v: int = 1024, seed: int = 0) -> torch.Tensor:
    """CLIP-like stand-in: a shared offset, varied token scales, a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_v, generator=g) + 0.5 * torch.randn(d_v, generator=g)
    x[:, :4] *= 8
    return x * torch.exp(0.3 * torch.randn(n, 1, generator=g))


def llava_projector() -> nn.Module:
    """A LLaVA-1.5-shaped projector (1024 -> 4096 -> 4096), seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096)).eval()


@torch.no_grad()
def image_tokens(n: int, projector: nn.Module) -> ImageTokens:
    """N stand-in tokens through ``projector``, with a square patch grid where N is one (576, 16384, as LLaVA's;
    none for 2880) and cdpruner's prompt: 32 text tokens in the embedding space (LLaVA-1.5 prompts hold ~30-60)."""
    x = features(n)  # (N, 1024)
    z = torch.cat([projector(b) for b in x.split(2048)])  # (N, 4096)
    text = torch.randn(32, z.shape[1], generator=torch.Generator().manual_seed(1)) * z.std() + z.mean(dim=0)
    side = math.isqrt(n)
    return ImageTokens(features=x, embeddings=z, model_embeddings=z, projector=projector, sample=0, image=0,
                       grid=(side, side) if side * side == n else None, extras={"text_embeddings": text})
