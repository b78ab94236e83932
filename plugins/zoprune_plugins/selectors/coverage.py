"""ZOO-Prune's selection: greedy picks that are both sensitive and unlike what is already kept (method.md, step 2)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl


class CoverageConfig(ComponentConfig):
    """How sensitivity and diversity combine; the paper's default is the product."""

    fusion: Literal["product", "sum"] = Field(
        default="product", description="gain = s * (1 - max cos) ('product', the paper's) or s + (1 - max cos)"
    )


class Coverage(Selector):
    """Start from the most sensitive token; then add ``argmax_i s_i * (1 - max_{j kept} cos(z_i, z_j))``.

    ``s`` is the score min-max normalised per image; ``z`` are the projected features. The state is one running
    maximum cosine per token: O(N) memory and O(N d) work per pick, never an N x N matrix.
    """

    name = "coverage"
    Config = CoverageConfig

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        return coverage_select(scores, tokens.embeddings, k, self.config.fusion)


def minmax(scores: torch.Tensor) -> torch.Tensor:
    """Scores scaled to [0, 1] per image (the authors add 1e-8 to the range, so constant scores give zeros)."""
    scores = scores.float()
    return (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)


def coverage_select(scores: torch.Tensor, embeddings: torch.Tensor, k: int,
                    fusion: str = "product") -> torch.Tensor:
    """Indices (k,) sorted ascending. ``scores``: (N,); ``embeddings``: (N, d)."""
    s = minmax(scores)
    z = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # (N, d)
    n = z.shape[0]
    chosen = torch.empty(k, dtype=torch.long, device=z.device)
    taken = torch.zeros(n, dtype=torch.bool, device=z.device)
    first = int(torch.argmax(s))
    chosen[0] = first
    taken[first] = True
    max_cos = z @ z[first]  # (N,) running max cosine similarity to the kept set
    for step in range(1, k):
        diversity = 1 - max_cos
        gain = s * diversity if fusion == "product" else s + diversity
        gain = gain.masked_fill(taken, float("-inf"))
        pick = int(torch.argmax(gain))
        chosen[step] = pick
        taken[pick] = True
        max_cos = torch.maximum(max_cos, z @ z[pick])
    return torch.sort(chosen).values


@hookimpl
def register_selectors(register):
    register(Coverage)
