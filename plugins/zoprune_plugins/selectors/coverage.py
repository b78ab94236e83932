"""ZOO-Prune's selection: greedy picks that are both sensitive and unlike what is already kept (method.md, step 2)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl
from zoprune_plugins.selection.geometry import identical_rows, minmax, most_isolated
from zoprune_plugins.selection.greedy import greedy_max_cosine
from zoprune_plugins.selection.lattice import evenly_spaced


class CoverageConfig(ComponentConfig):
    """How sensitivity and diversity combine; the paper's default is the product."""

    fusion: Literal["product", "sum"] = Field(
        default="product", description="gain = s * (1 - max cos) ('product', the paper's) or s + (1 - max cos)"
    )


class Coverage(Selector):
    """Start from the most sensitive token; then add ``argmax_i s_i * (1 - max_{j kept} cos(z_i, z_j))``.

    ``s`` is the score min-max normalised per image; ``z`` are the projected features. The state is one running
    maximum cosine per token (O(N) memory, never an N x N matrix), kept up to date lazily: see
    :func:`~zoprune_plugins.selection.greedy.greedy_max_cosine`.

    Degenerate inputs (docs/reliability.md): when every score is equal the scores say nothing, so the selection is
    pure diversity, DivPrune's (the authors' code keeps tokens 0..k-1 there: its +1e-8 turns every weight into 0);
    when every token is identical no choice is better than another, so k evenly spaced tokens are kept.
    """

    name = "coverage"
    Config = CoverageConfig

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        return coverage_select(scores, tokens.embeddings, k, self.config.fusion)


def coverage_select(scores: torch.Tensor, embeddings: torch.Tensor, k: int,
                    fusion: str = "product") -> torch.Tensor:
    """Indices (k,) sorted ascending. ``scores``: (N,); ``embeddings``: (N, d), any dtype, never copied whole."""
    if identical_rows(embeddings):
        return evenly_spaced(embeddings.shape[0], k, embeddings.device)
    s, first = sensitivity_weights(scores, embeddings)
    return greedy_max_cosine(s.to(embeddings.device), embeddings, k, first, fusion)


def sensitivity_weights(scores: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(s, first)``: the weights (N,) of the greedy and its first pick. Normally ``minmax(scores)`` and the most
    sensitive token. When every score is equal there is no preference: weights of 1 and DivPrune's first pick (the
    most isolated token), so the selection is DivPrune's -- not tokens 0..k-1, which the +1e-8 of the authors'
    normalisation would give (every weight 0, every gain 0, the lowest index winning each pick)."""
    scores = scores.float()
    if bool((scores == scores[0]).all()):
        return torch.ones_like(scores), most_isolated(embeddings)
    s = minmax(scores)
    return s, int(torch.argmax(s))


def coverage_select_dense(scores: torch.Tensor, embeddings: torch.Tensor, k: int,
                          fusion: str = "product") -> torch.Tensor:
    """The plain loop (one pass over all N normalised tokens per pick); ``coverage_select`` picks the same tokens.
    Kept as the reference for tests and benchmarks."""
    if identical_rows(embeddings):
        return evenly_spaced(embeddings.shape[0], k, embeddings.device)
    s, first = sensitivity_weights(scores, embeddings)
    z = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # (N, d)
    n = z.shape[0]
    chosen = torch.empty(k, dtype=torch.long, device=z.device)
    taken = torch.zeros(n, dtype=torch.bool, device=z.device)
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
