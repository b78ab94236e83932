"""One entry (an image, or a view or frame of one) scored and selected: the :class:`Selection` record of what it
kept, and :func:`select_entry`, the per-image step of every pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoprune.checks import _check_kept, _check_merge, _choose, _origin, _score, check_finite
from zoprune.errors import PluginError
from zoprune.interfaces import Context, ImageTokens, Merge, ModelAdapter, Scorer, Selector


@dataclass(frozen=True)
class Selection:
    """What was kept of one image (or one view or frame of it) in the last call.

    Attributes:
        sample: the prompt's index in the batch.
        image: the image's index within its prompt.
        num_tokens: N, the image's visual tokens before pruning.
        kept: (k,) long, the sorted indices into the N tokens that were kept (with a merging selector: those
            kept unchanged, k - M of them).
        scores: (N,) the scorer's output; None without a scorer or when all N tokens were kept.
        grid: (rows, cols) of the patch grid, when the tokens form one.
        merged: (M, d_l) in the model's dtype, the tokens a merging selector built (placed after the kept ones);
            None for selectors that only keep.
        groups: (N,) long, which merged token each token went into (-1: kept or none); None without merging.
    """

    sample: int  # the prompt's index in the batch
    image: int  # the image's index within its prompt
    num_tokens: int  # N, the image's visual tokens before pruning
    kept: torch.Tensor  # (k,) sorted indices into the N tokens
    scores: torch.Tensor | None  # (N,) the scorer's output; None without a scorer or when all N are kept
    grid: tuple[int, int] | None = None  # (rows, cols) of the patch grid, when the tokens form one
    merged: torch.Tensor | None = None  # (M, d_l) merged tokens, model dtype; None without merging
    groups: torch.Tensor | None = None  # (N,) long: merged token of each token, -1 for kept ones

    @property
    def num_kept(self) -> int:
        """The tokens the language model sees for this entry: the kept ones plus the merged ones (the budget)."""
        return self.kept.numel() + (self.merged.shape[0] if self.merged is not None else 0)


def select_entry(scorer: Scorer | None, selector: Selector, tokens: ImageTokens, k: int, seed: int,
                 scores: torch.Tensor | None = None, adapter: ModelAdapter | str = "adapter",
                 stage: str = "pre_llm") -> tuple[Selection, torch.Tensor | None]:
    """Score (unless ``scores`` are given) and select k of one entry's tokens, checked, with a generator seeded
    afresh from ``seed``: what a pipeline does per image, usable on tokens that did not come from an adapter (a
    serving engine's tensors, see :mod:`zoprune.integrations.vllm`). Returns the selection and the scores.
    ``adapter`` (or its name) and ``stage`` are for error messages."""
    # a generator per image, seeded alike: an image's selection does not depend on its batch neighbours
    ctx = Context(generator=torch.Generator(tokens.features.device).manual_seed(seed), dtype=tokens.features.dtype)
    n = tokens.num_tokens
    if not 1 <= k <= n:
        origin = f"adapter {adapter!r}" if isinstance(adapter, str) else _origin("adapter", adapter)
        raise PluginError(f"{origin} gave a budget of {k} tokens to an entry of {n}")
    if k == n:  # nothing to prune: no scoring work either
        return Selection(tokens.sample, tokens.image, n, torch.arange(n), None, tokens.grid), None
    check_finite(tokens, stage)
    if scores is None and scorer is not None:
        scores = _score(scorer, tokens, ctx)
    chosen = _choose(selector, scores, tokens, k, ctx)
    merged = groups = None
    if isinstance(chosen, Merge):
        merged, groups = _check_merge(chosen, tokens, k, _origin("selector", selector))
        chosen = chosen.kept
    _check_kept(chosen, n, k - (merged.shape[0] if merged is not None else 0), _origin("selector", selector),
                tokens)
    return Selection(tokens.sample, tokens.image, n, chosen.to(torch.long), scores, tokens.grid, merged,
                     groups), scores
