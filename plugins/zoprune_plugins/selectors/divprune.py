"""DivPrune (Alvar et al., CVPR 2025): greedy max-min diversity over the projected features, cosine distance.

Follows the ``DivPrune`` function of the official code (vbdi/divprune, ``LLaVA/llava/model/llava_arch.py``),
rewritten so memory stays O(N d): the official code builds the N x N distance matrix ``1 - cos``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl


class DivPruneConfig(ComponentConfig):
    """DivPrune has no parameters besides the budget; ``chunk`` only bounds the memory of the first pick."""

    chunk: int = Field(default=1024, ge=1, description="columns of the distance matrix formed at once for the "
                       "first pick; memory O(N x chunk)")


class DivPrune(Selector):
    """First pick: the token whose nearest neighbour is farthest; then, k - 1 times, the token whose minimum
    cosine distance to the kept set is largest.

    State: one running minimum distance per token, updated with one (N, d) x (d,) product per pick, so the
    whole selection is O(N d) memory and O(N k d) work.
    """

    name = "divprune"
    Config = DivPruneConfig
    needs_scores = False

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        return divprune_select(tokens.embeddings, k, self.config.chunk)


def nearest_neighbour_distance(z: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """For unit rows ``z`` (N, d): the second smallest value of each column of ``D = 1 - z z^T``, (N,).

    The self-distance (about 0) is normally the smallest, so this is the distance to the nearest other token,
    computed exactly as the official ``topk(D, 2, dim=0, largest=False).values[1]`` but from (N, chunk) blocks.
    """
    out = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
    for start in range(0, z.shape[0], chunk):
        block = 1.0 - z @ z[start:start + chunk].T  # (N, c): columns start..start+c of D
        out[start:start + chunk] = torch.topk(block, 2, dim=0, largest=False).values[1]
    return out


def divprune_select(embeddings: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices (k,) sorted ascending. ``embeddings``: (N, d) projected features, N >= 2."""
    z = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # (N, d)
    n = z.shape[0]
    chosen = torch.empty(k, dtype=torch.long, device=z.device)
    taken = torch.zeros(n, dtype=torch.bool, device=z.device)
    # torch.argmax returns the first maximal index, as in the official code: ties go to the earlier token
    first = int(torch.argmax(nearest_neighbour_distance(z, chunk)))
    chosen[0] = first
    taken[first] = True
    min_distance = 1.0 - z @ z[first]  # (N,) distance of every token to the kept set
    for step in range(1, k):
        # the official code does not exclude kept tokens (their self-distance is ~0, so they are not picked
        # again unless duplicates leave nothing farther); masking them guarantees k distinct tokens
        pick = int(torch.argmax(min_distance.masked_fill(taken, float("-inf"))))
        chosen[step] = pick
        taken[pick] = True
        min_distance = torch.minimum(min_distance, 1.0 - z @ z[pick])
    return torch.sort(chosen).values


@hookimpl
def register_selectors(register):
    register(DivPrune)
