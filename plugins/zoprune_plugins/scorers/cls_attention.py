"""[CLS] attention (FasterVLM; VisionZip's "dominant" tokens): rank patches by the attention the vision encoder's
[CLS] token pays them in the layer the features are taken from (LLaVA: the penultimate one)."""

from __future__ import annotations

import torch

from zoprune import Context, ImageTokens, Scorer, hookimpl
from zoprune.errors import InputError


class ClsAttention(Scorer):
    """``S(i)`` = attention of [CLS] to token i, averaged over heads, from ``tokens.extras["cls_attention"]``.

    VisionZip sums over heads instead: the same ranking. Use with ``topk`` to keep VisionZip's dominant tokens.
    """

    name = "cls_attention"
    requires = frozenset({"cls_attention"})

    def score(self, tokens: ImageTokens, ctx: Context) -> torch.Tensor:
        attention = tokens.extras.get("cls_attention")
        if attention is None:
            raise InputError("the adapter did not provide `cls_attention` for these tokens")
        return attention.float()  # (N,)


@hookimpl
def register_scorers(register):
    register(ClsAttention)
