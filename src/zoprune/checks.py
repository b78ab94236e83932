"""The checks between the pipeline and what it is given: the caller's inputs, the tokens an adapter extracts, and
every scorer's and selector's output (a plugin's bug or a NaN is named here, with the image and the component)."""

from __future__ import annotations

from typing import Any

import torch

from zoprune.errors import InputError, NumericalError, PluginError, ZopruneError
from zoprune.interfaces import Context, ImageTokens, Merge, Scorer, Selector
from zoprune.registry import get_registry


def _score(scorer: Scorer, tokens: ImageTokens, ctx: Context) -> torch.Tensor:
    """The scorer's (N,) scores, checked: a plugin's bug or a NaN is named here, with the image."""
    what, where = _origin("scorer", scorer), entry_name(tokens)
    try:
        scores = scorer.score(tokens, ctx)
    except ZopruneError:
        raise
    except Exception as error:  # a plugin's own exception: say whose it is and on which image
        raise PluginError(f"{what} failed on {where}: {type(error).__name__}: {error}") from error
    n, device = tokens.num_tokens, tokens.features.device
    problem = None
    if not isinstance(scores, torch.Tensor):
        problem = f"a {type(scores).__name__} instead of a tensor"
    elif tuple(scores.shape) != (n,):
        problem = f"scores of shape {tuple(scores.shape)}, expected ({n},)"
    elif not scores.dtype.is_floating_point:
        problem = f"scores of dtype {scores.dtype}, expected a floating-point dtype"
    elif scores.device != device:
        problem = f"scores on device {scores.device}, expected the tokens' device {device}"
    if problem:
        raise PluginError(f"{what} returned {problem} for {where}")
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise NumericalError(f"{what} returned {bad} non-finite scores (NaN or inf) of {n} for {where}, whose "
                             f"tokens are finite; nothing was selected")
    return scores


def _choose(selector: Selector, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> Any:
    """The selector's output for one entry (checked by the caller); its own exceptions are named."""
    try:
        chosen = selector.select(scores, tokens, k, ctx)
    except ZopruneError:
        raise
    except Exception as error:
        raise PluginError(f"{_origin('selector', selector)} failed on {entry_name(tokens)}: "
                          f"{type(error).__name__}: {error}") from error
    if not isinstance(chosen, (torch.Tensor, Merge)):
        raise PluginError(f"{_origin('selector', selector)} returned a {type(chosen).__name__} for "
                          f"{entry_name(tokens)}; expected a tensor of indices"
                          + (" or a Merge" if selector.merges else ""))
    return chosen


def entry_name(tokens: ImageTokens) -> str:
    """How error messages name an entry: ``image 1 of prompt 0`` (``, view 2`` for a view or frame)."""
    view = getattr(tokens, "view", 0)
    return f"image {tokens.image} of prompt {tokens.sample}" + (f", view {view}" if view else "")


def _origin(kind: str, component: Any) -> str:
    """How error messages name a component: ``scorer 'name' (from distribution 'dist')``."""
    registered = get_registry().components.get(kind, {}).get(component.name)
    if registered is not None and registered.cls is type(component):
        return f"{kind} {component.name!r} (from distribution {registered.distribution!r})"
    return f"{kind} {component.name!r}"


# what each tensor of an entry is, by where the entry comes from: for errors that name the component at fault
_SOURCES = {
    "pre_llm": (("features", "the vision features (the projector's input)"),
                ("model_embeddings", "the projector's output"),
                ("embeddings", "the projector's output in the scoring dtype")),
    "in_llm": (("model_embeddings", "the language model's hidden states at the selector's layer"),),
}


def check_finite(tokens: ImageTokens, stage: str = "pre_llm") -> None:
    """A NumericalError naming the entry and the component when its tokens hold NaN or inf: scores and
    similarities of such tokens are meaningless, and a selection from them would be arbitrary."""
    for attribute, what in _SOURCES[stage]:
        values = getattr(tokens, attribute)
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            hint = (" (float16 overflow is the usual cause: load the model in bfloat16 or float32)"
                    if values.dtype == torch.float16 else "")
            dtype = str(values.dtype).removeprefix("torch.")
            raise NumericalError(f"{bad} non-finite values (NaN or inf) in {what} for {entry_name(tokens)} "
                                 f"({dtype}){hint}; nothing was pruned")


def check_inputs(inputs: dict[str, Any]) -> None:
    """InputError for inputs no model could run on: not tensors, wrong dtypes or ranks, empty batches or prompts
    (family-specific checks, such as placeholders against images, are the adapters')."""
    input_ids = inputs.get("input_ids")
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor):
            raise InputError(f"`input_ids` must be a tensor (call the processor with return_tensors='pt'), "
                             f"got a {type(input_ids).__name__}")
        if input_ids.ndim != 2:
            raise InputError(f"`input_ids` must be (batch, length), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise InputError(f"`input_ids` must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.numel() == 0:
            raise InputError(f"`input_ids` of shape {tuple(input_ids.shape)}: an empty batch or empty prompts")
        mask = inputs.get("attention_mask")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(input_ids.shape):
                shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise InputError(f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                                 f"got {shape}")
            empty = (~mask.bool()).all(dim=1).nonzero().flatten().tolist()
            if empty:
                raise InputError(f"prompt {empty[0]} is empty: its attention_mask is all zeros")
    for key in ("pixel_values", "pixel_values_videos"):
        value = inputs.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise InputError(f"`{key}` must be a tensor (call the processor with return_tensors='pt'), got a "
                             f"{type(value).__name__}")
        if not value.dtype.is_floating_point:
            raise InputError(f"`{key}` must be floating point (the image processor's output), got dtype "
                             f"{value.dtype}")
        if value.numel() == 0:
            raise InputError(f"`{key}` of shape {tuple(value.shape)} holds no pixels")


def _check_merge(merge: Merge, tokens: ImageTokens, k: int,
                 selector: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A merging selector's merged tokens (M, d_l) in the model's dtype (None when M = 0) and its groups (N,),
    checked. ``selector`` is how errors name it (``selector 'visionzip' (from distribution 'zoprune')``)."""
    n, width = tokens.num_tokens, tokens.model_embeddings.shape[-1]
    embeddings, groups = merge.embeddings, merge.groups
    problem = None
    if not isinstance(embeddings, torch.Tensor) or not isinstance(groups, torch.Tensor):
        problem = "merged tokens and groups that are not tensors"
    elif embeddings.ndim != 2 or embeddings.shape[1] != width or embeddings.shape[0] > k:
        problem = f"merged tokens of shape {tuple(embeddings.shape)}, expected (M <= {k}, {width})"
    elif tuple(groups.shape) != (n,) or groups.dtype.is_floating_point:
        problem = f"groups of shape {tuple(groups.shape)} and dtype {groups.dtype}, expected ({n},) integers"
    if problem:
        raise PluginError(f"{selector} returned {problem} for {entry_name(tokens)}")
    merged = embeddings.to(tokens.model_embeddings.dtype) if embeddings.shape[0] else None
    return merged, groups.to(torch.long)


def _check_kept(kept: torch.Tensor, n: int, k: int, selector: str, tokens: ImageTokens) -> None:
    # a plugin's bug should surface here with its name, not as a shape error deep inside the language model
    problem = None
    if not isinstance(kept, torch.Tensor):
        problem = f"kept indices as a {type(kept).__name__} instead of a tensor"
    elif kept.ndim != 1 or kept.numel() != k:
        problem = f"{tuple(kept.shape)} indices, expected {k}"
    elif kept.dtype.is_floating_point:
        problem = f"indices of dtype {kept.dtype}"
    elif k and (int(kept.min()) < 0 or int(kept.max()) >= n):
        problem = f"indices outside [0, {n})"
    elif k > 1 and not bool((kept[1:] > kept[:-1]).all()):
        problem = "indices that are not distinct and sorted ascending"
    if problem:
        raise PluginError(f"{selector} returned {problem} for {entry_name(tokens)}")
