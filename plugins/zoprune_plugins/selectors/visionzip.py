"""VisionZip (Yang et al., CVPR 2025): keep the "dominant" tokens (highest scores; with the ``cls_attention`` scorer,
the patches the vision encoder's [CLS] attends to most) and merge the others into a few "contextual" tokens.

Of a budget of k tokens, M are contextual and k - M dominant. The N - (k - M) remaining tokens, in their original
order, are the merge candidates: every ``step``-th of them (``step = max(1, R // M)`` for R candidates, the first
M such) is a target, every other candidate joins the target whose key is most similar (cosine: the dot product of
L2-normalised keys, ties to the first target), and each group (target included) is averaged into one contextual
token. The average is taken over the projector's *input* features and then projected, as VisionZip averages the
vision encoder's hidden states before LLaVA's projector. The contextual tokens follow the dominant ones, in target
order.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from zoprune import ComponentConfig, Context, ImageTokens, InputError, Merge, Selector, hookimpl

#: VisionZip's LLaVA-1.5 defaults: 10 of 64, 20 of 128, 30 of 192 tokens are contextual
DEFAULT_CONTEXTUAL_RATIO = 10 / 64


class VisionZipConfig(ComponentConfig):
    contextual: int | None = Field(
        default=None, ge=0, description="contextual (merged) tokens per image, counted in the budget; at most "
        "budget - 1. Give this or `contextual_ratio`, not both")
    contextual_ratio: float | None = Field(
        default=None, ge=0, lt=1, description="fraction of the budget made of contextual tokens, rounded (default "
        "10/64, VisionZip's 54 + 10 of 64, 108 + 20 of 128, 162 + 30 of 192)")
    similarity: Literal["keys", "features"] = Field(
        default="keys", description="what groups tokens: 'keys' (VisionZip: the encoder's keys at the feature "
        "layer, mean over heads; the adapter must provide `vision_keys`) or 'features' (the projector inputs)")
    merge: Literal["mean", "target_plus_mean"] = Field(
        default="target_plus_mean", description="'target_plus_mean' (VisionZip's released code, which produced its "
        "published numbers): the target plus the mean of the others; 'mean': the mean of the group, target included "
        "(the paper's wording)")

    @model_validator(mode="after")
    def _one_count(self) -> "VisionZipConfig":
        if self.contextual is not None and self.contextual_ratio is not None:
            raise ValueError("give `contextual` (a count) or `contextual_ratio` (a fraction of the budget), not both")
        return self

    def contextual_for(self, k: int) -> int:
        """M, the contextual tokens of a budget of k: at least one token stays dominant."""
        if self.contextual is not None:
            count = self.contextual
        else:
            ratio = DEFAULT_CONTEXTUAL_RATIO if self.contextual_ratio is None else self.contextual_ratio
            count = int(ratio * k + 0.5)
        return max(0, min(count, k - 1))


class VisionZip(Selector):
    """The k - M highest-scored tokens, plus M contextual tokens merged from the rest (see the module docstring)."""

    name = "visionzip"
    Config = VisionZipConfig
    merges = True

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"vision_keys"}) if self.config.similarity == "keys" else frozenset()

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> Merge:
        n = tokens.num_tokens
        m = self.config.contextual_for(k)
        order = torch.sort(scores.float(), descending=True, stable=True).indices  # ties: the earlier token
        kept = torch.sort(order[:k - m]).values  # (k - M,) the dominant tokens, original order
        groups = torch.full((n,), -1, dtype=torch.long, device=kept.device)
        if m == 0:
            return Merge(kept, tokens.embeddings.new_zeros(0, tokens.embeddings.shape[-1]), groups)
        rest = torch.ones(n, dtype=torch.bool, device=kept.device)
        rest[kept] = False
        candidates = rest.nonzero().squeeze(-1)  # (R,) the merge candidates, original order
        step = max(1, candidates.numel() // m)
        targets = torch.arange(0, candidates.numel(), step, device=kept.device)[:m]  # (M,) into candidates
        metric = self._metric(tokens)[candidates].float()  # (R, d)
        metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        nearest = (metric @ metric[targets].T).argmax(dim=1)  # (R,) index of the most similar target
        nearest[targets] = torch.arange(m, device=kept.device)  # a target is its own group
        groups[candidates] = nearest
        features = tokens.features[candidates]  # (R, d_v)
        sums = features.new_zeros(m, features.shape[-1]).index_add_(0, nearest, features)  # (M, d_v)
        counts = torch.bincount(nearest, minlength=m).to(features.dtype)[:, None]  # (M, 1), each >= 1
        if self.config.merge == "mean":
            merged = sums / counts
        else:  # the released code: the target plus the mean of the others in its group (none: + 0)
            target = features[targets]
            merged = target + (sums - target) / (counts - 1).clamp_min(1)
        return Merge(kept, tokens.projector(merged), groups)  # embeddings: (M, d_l)

    def _metric(self, tokens: ImageTokens) -> torch.Tensor:
        if self.config.similarity == "features":
            return tokens.features
        keys = tokens.extras.get("vision_keys")
        if keys is None:
            raise InputError("the adapter did not provide `vision_keys` for these tokens; use "
                             "`similarity: features`")
        return keys


@hookimpl
def register_selectors(register):
    register(VisionZip)
