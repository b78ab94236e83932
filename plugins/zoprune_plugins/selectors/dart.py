"""DART (Wen et al., EMNLP 2025, "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More"): prune inside the language model by duplication. A few pivot tokens (the largest key L1 norms in
decoder layer K-1) each claim the image tokens least similar to them; the rest, near-duplicates of what is kept, are
dropped from layer K on."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from zoprune import ComponentConfig, Context, ImageTokens, InputError, hookimpl
from zoprune_plugins.selection.in_llm import InLLMSelector

SIGNALS = ("llm_key_norm", "llm_states", "llm_text_key_norm", "llm_text_states")


class DartConfig(ComponentConfig):
    """The official defaults: K = 2, 4 image pivots and 4 text pivots."""

    layer: int = Field(default=2, ge=1, description="K: layers 0..K-1 see every token, layers K.. the kept ones; "
                                                    "keys and states are read in layer K-1")
    image_pivots: int = Field(default=4, ge=0, description="pivots among the image tokens (largest key L1 norms); "
                                                           "always kept")
    text_pivots: int = Field(default=4, ge=0, description="pivots among the prompt's text tokens after the image "
                                                          "(largest key L1 norms); not kept by the image's budget")

    @model_validator(mode="after")
    def _some_pivot(self) -> "DartConfig":
        if self.image_pivots + self.text_pivots == 0:
            raise ValueError("DART needs at least one pivot: image_pivots + text_pivots >= 1")
        return self


class Dart(InLLMSelector):
    """Keep the ``image_pivots`` image tokens with the largest key L1 norm in layer K-1 (post-RoPE keys, all heads),
    then let every pivot (those image pivots by decreasing norm, then the ``text_pivots`` text tokens of the prompt
    after the image with the largest key norms, by decreasing norm) claim in turn its share of the remaining budget:
    the unclaimed image tokens with the lowest cosine similarity to it, on layer K-1's output through the model's
    final norm. Shares are ``(k - image pivots) // pivots``, the first ``(k - image pivots) % pivots`` pivots one
    more, so exactly k tokens are kept. Needs keys and hidden states only (SDPA and FlashAttention-style kernels
    stay on); kept tokens keep their original positions."""

    name = "dart"
    Config = DartConfig

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        missing = [name for name in SIGNALS if name not in tokens.extras]
        if missing:
            raise InputError(f"the adapter did not provide {', '.join(missing)}: dart runs inside the language model")
        key_norm = tokens.extras["llm_key_norm"].float()  # (N,)
        states = tokens.extras["llm_states"].float()  # (N, d)
        text_norm = tokens.extras["llm_text_key_norm"].float()  # (T,)
        text_states = tokens.extras["llm_text_states"].float()  # (T, d)
        return dart_select(key_norm, states, text_norm, text_states, k, self.config.image_pivots,
                           self.config.text_pivots)


def dart_select(key_norm: torch.Tensor, states: torch.Tensor, text_norm: torch.Tensor, text_states: torch.Tensor,
                k: int, image_pivots: int, text_pivots: int) -> torch.Tensor:
    """DART's selection on one image: (k,) sorted indices into its N tokens (see :class:`Dart`).

    ``key_norm`` (N,) and ``states`` (N, d) of the image tokens, ``text_norm`` (T,) and ``text_states`` (T, d) of
    the candidate text pivots (T may be 0). Ties go to the lower index (stable sorts)."""
    n = key_norm.numel()
    by_norm = torch.sort(key_norm, descending=True, stable=True).indices
    image = by_norm[:min(image_pivots, k)]  # (p_img,) always kept
    kept = torch.zeros(n, dtype=torch.bool, device=key_norm.device)
    kept[image] = True
    remaining = k - image.numel()
    if remaining == 0:
        return image.sort().values
    text = torch.sort(text_norm, descending=True, stable=True).indices[:text_pivots]
    pivots = torch.cat([states[image], text_states[text]])  # (P, d): image pivots first, each by decreasing norm
    if pivots.shape[0] == 0:
        raise InputError("dart has no pivot: no image pivots and no text tokens in the prompt")
    share, extra = divmod(remaining, pivots.shape[0])
    unit = torch.nn.functional.normalize(states, dim=-1)  # (N, d)
    similarity = unit @ torch.nn.functional.normalize(pivots, dim=-1).T  # (N, P): cosine to every pivot
    for p in range(pivots.shape[0]):
        claim = share + (1 if p < extra else 0)
        if claim == 0:
            continue
        # the least similar unclaimed tokens: claimed ones sort last
        order = torch.sort(similarity[:, p].masked_fill(kept, float("inf")), stable=True).indices
        kept[order[:claim]] = True
    return kept.nonzero().squeeze(-1)


@hookimpl
def register_selectors(register):
    register(Dart)
