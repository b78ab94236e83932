"""FastV (Chen et al., ECCV 2024): prune inside the language model. Its first K layers (default 2) run on every
token; the image tokens the last prompt token attends to least in layer K-1 are dropped from layer K on."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, InputError, hookimpl
from zoprune_plugins.selection.in_llm import InLLMSelector


class FastVConfig(ComponentConfig):
    layer: int = Field(default=2, ge=1, description="K: layers 0..K-1 see every token, layers K.. the kept ones; "
                                                    "the attention is read in layer K-1 (as the official code does)")
    query: Literal["last", "text"] = Field(
        default="last", description="whose attention ranks the image tokens: the last prompt token (FastV), or the "
                                    "mean over every text token of the prompt")


class FastV(InLLMSelector):
    """The k image tokens with the highest attention from the last prompt token (or the mean over text tokens) in
    decoder layer K-1, averaged over heads; kept tokens keep their original positions."""

    name = "fastv"
    Config = FastVConfig

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        signal = "llm_attention" if self.config.query == "last" else "llm_attention_text"
        attention = tokens.extras.get(signal)
        if attention is None:
            raise InputError(f"the adapter did not provide `{signal}`: fastv runs inside the language model")
        order = torch.sort(attention.float(), descending=True, stable=True).indices
        return torch.sort(order[:k]).values


@hookimpl
def register_selectors(register):
    register(FastV)
