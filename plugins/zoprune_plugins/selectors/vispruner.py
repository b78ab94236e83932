"""VisPruner: the most important tokens by visual attention, then the least duplicated of the rest (Zhang et al.,
"Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in VLMs", ICCV 2025)."""

from __future__ import annotations

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl
from zoprune_plugins.selection.geometry import unit_rows


class VisPrunerConfig(ComponentConfig):
    """The share of the budget that goes to important tokens; the authors use 0.5 at 128 tokens."""

    important_ratio: float = Field(default=0.5, ge=0, le=1, description="share of the k tokens kept by score; the "
                                   "rest are the least duplicated of the others")
    step: int = Field(default=8, ge=1, description="tokens removed per de-duplication round (the authors' 8)")


class VisPruner(Selector):
    """Keep the ``int(k * important_ratio)`` highest-scoring tokens (VisPruner scores by [CLS] attention: method
    ``vispruner``); of the rest, in falling score order, remove duplicates until ``k`` tokens remain: split them into
    even and odd positions, find each even one's highest cosine to an odd one, drop the ``step`` even tokens with
    the highest, repeat (the kept even tokens, in falling similarity, then the odd ones form the next round's
    order). Cosines are of the projector's input features, as in the authors' code.

    Deliberate differences from the official code: ties in the score order and in the similarity order go to the
    lower index (a stable sort; the official ``argsort`` leaves them to the device), and a residual of odd length
    is split as ``[::2]`` / ``[1::2]`` (the official batched indexing fails on it).
    """

    name = "vispruner"
    Config = VisPrunerConfig

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        return vispruner_select(scores, tokens.features, k, self.config.important_ratio, self.config.step)


def vispruner_select(scores: torch.Tensor, features: torch.Tensor, k: int, important_ratio: float = 0.5,
                     step: int = 8) -> torch.Tensor:
    """Indices (k,) sorted ascending. ``scores``: (N,); ``features``: (N, d)."""
    important = int(k * important_ratio)
    diverse = k - important
    order = torch.sort(scores.float(), descending=True, stable=True).indices.to(features.device)  # (N,)
    residual = order[important:]  # (R,) in falling score order
    z = unit_rows(features)
    while (r := min(step, residual.numel() - diverse)) > 0:
        even, odd = residual[::2], residual[1::2]
        if not odd.numel():  # one token left and none wanted: nothing to compare it with
            residual = residual[:diverse]
            break
        similarity = (z[even] @ z[odd].T).amax(dim=1)  # (R_even,) each even token's closest odd one
        distinct = torch.sort(similarity, descending=True, stable=True).indices[r:]
        residual = torch.cat([even[distinct], odd])
    return torch.sort(torch.cat([order[:important], residual])).values


@hookimpl
def register_selectors(register):
    register(VisPruner)
