"""Maximal marginal relevance: importance traded against similarity to what is already kept, with any scorer (the
selection rule of IDPruner; Carbonell and Goldstein's MMR)."""

from __future__ import annotations

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl
from zoprune_plugins.selection.geometry import minmax
from zoprune_plugins.selection.greedy import greedy_max_cosine


class MMRConfig(ComponentConfig):
    """lambda weighs importance against redundancy; 0.5 weighs them equally."""

    lam: float = Field(default=0.5, ge=0, le=1, description="gain = lam * s - (1 - lam) * max cos to the kept set")


class MMR(Selector):
    """Start from the highest score; then add ``argmax_i lam * s_i - (1 - lam) * max_{j kept} cos(z_i, z_j)``.

    ``s`` is the score min-max normalised per image, so that ``lam`` trades two quantities on comparable scales
    (cosines lie in [-1, 1]); ``z`` are the projected features. The gain falls as the kept set grows, so the
    selection runs on coverage's exact lazy-greedy engine
    (:func:`~zoprune_plugins.selection.greedy.greedy_max_cosine`).
    ``lam = 1`` is top-k by score; ``lam = 0`` is max-min diversity from the highest-scoring token.
    """

    name = "mmr"
    Config = MMRConfig

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        s = minmax(scores).to(tokens.embeddings.device)
        lam = self.config.lam
        return greedy_max_cosine(s, tokens.embeddings, k, int(torch.argmax(s)),
                                 fusion=lambda s, max_cos: lam * s - (1 - lam) * max_cos)


@hookimpl
def register_selectors(register):
    register(MMR)
