"""DivPrune (Alvar et al., CVPR 2025): greedy max-min diversity over the projected features, cosine distance.

Follows the ``DivPrune`` function of the official code (vbdi/divprune, ``LLaVA/llava/model/llava_arch.py``),
rewritten so memory stays O(N) besides the input: the official code builds the N x N distance matrix ``1 - cos``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl
from zoprune_plugins.selection.geometry import identical_rows, most_isolated
from zoprune_plugins.selection.greedy import greedy_max_cosine
from zoprune_plugins.selection.lattice import evenly_spaced


class DivPruneConfig(ComponentConfig):
    """DivPrune has no parameters besides the budget; ``chunk`` only bounds the memory of the first pick."""

    chunk: int = Field(default=1024, ge=1, description="rows and columns of the distance matrix formed at once "
                       "for the first pick; memory O(chunk^2 + chunk d)")


class DivPrune(Selector):
    """First pick: the token whose nearest neighbour is farthest; then, k - 1 times, the token whose minimum
    cosine distance to the kept set is largest.

    State: one running minimum distance per token, brought up to date lazily (only for the tokens that compete
    for the top), so the selection needs O(N) memory besides the k kept rows; the first pick compares all N^2
    pairs by definition, but bounds spare most of them on image tokens
    (:func:`~zoprune_plugins.selection.geometry.most_isolated`).
    """

    name = "divprune"
    Config = DivPruneConfig
    needs_scores = False

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        return divprune_select(tokens.embeddings, k, self.config.chunk)


def divprune_select(embeddings: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices (k,) sorted ascending. ``embeddings``: (N, d) projected features, N >= 2, read in place.

    After the first pick, ``argmax_i min_{j kept} (1 - cos(z_i, z_j))`` is ``argmax_i 1 * (1 - max cos)``: the
    coverage selector's greedy with all sensitivities 1 (exact lazy evaluation, O(N) state; see
    :func:`~zoprune_plugins.selection.greedy.greedy_max_cosine`). Kept tokens are not picked again: the official
    code does not exclude them (their self-distance is ~0, so they only come back when duplicates leave nothing
    farther); excluding them guarantees k distinct tokens. When all N tokens are identical every pick is a tie
    (the official code's would be tokens 0..k-1): k evenly spaced tokens are kept instead.
    """
    n = embeddings.shape[0]
    if identical_rows(embeddings):
        return evenly_spaced(n, k, embeddings.device)
    # ties go to the earlier token, as torch.argmax does in the official code
    first = most_isolated(embeddings, chunk)
    ones = torch.ones(n, dtype=torch.float32, device=embeddings.device)
    return greedy_max_cosine(ones, embeddings, k, first, "product")


@hookimpl
def register_selectors(register):
    register(DivPrune)
