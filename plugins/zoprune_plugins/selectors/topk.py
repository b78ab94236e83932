"""Keep the k highest-scoring tokens: the "sensitivity only" ablation with the ZO scorer, or plain ranking with
any other scorer."""

from __future__ import annotations

import torch

from zoprune import Context, ImageTokens, Selector, hookimpl


class TopK(Selector):
    """The k tokens with the highest scores, in their original order (ties go to the earlier token)."""

    name = "topk"

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        # a stable sort makes ties deterministic across devices, unlike torch.topk
        order = torch.sort(scores.float(), descending=True, stable=True).indices
        return torch.sort(order[:k]).values


@hookimpl
def register_selectors(register):
    register(TopK)
