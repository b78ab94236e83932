"""The random baseline: k tokens drawn uniformly without replacement, the floor every method must beat."""

from __future__ import annotations

import torch

from zoprune import Context, ImageTokens, Selector, hookimpl


class RandomSelector(Selector):
    """k tokens drawn uniformly at random from ``ctx.generator`` (so a seed reproduces the selection)."""

    name = "random"
    needs_scores = False

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        # drawn on the generator's device, so the same seed gives the same tokens wherever the features live
        order = torch.randperm(tokens.num_tokens, generator=ctx.generator, device=ctx.generator.device)
        return torch.sort(order[:k]).values.to(tokens.features.device)


@hookimpl
def register_selectors(register):
    register(RandomSelector)
