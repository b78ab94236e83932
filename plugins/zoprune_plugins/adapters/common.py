"""Pieces shared by the adapters of families whose images are not one fixed block of tokens (LLaVA-NeXT's AnyRes
views and newline tokens, Qwen's dynamic resolution and videos).

Such an adapter describes every image or video as a :class:`VisualInput` (its L placeholder positions in the prompt
and the L embeddings the model would put there) and emits one or more :class:`ViewTokens` per input (the whole
input, or one entry per view or frame), each naming the positions of its N tokens among the input's L. Positions that
no entry covers are either always kept (``VisualInput.always``) or always dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from zoprune import Budget, ImageTokens, InputError, PrunedEmbedding


@dataclass(eq=False)
class VisualInput:
    """One image or video as the language model sees it."""

    kind: str  # "image" or "video": the key of ``mm_encoder_outputs`` its embeddings go to
    index: int  # its place among the batch's inputs of that kind (the order of ``pixel_values``)
    sample: int  # the prompt it belongs to
    columns: torch.Tensor  # (L,) long: positions of its placeholders in the prompt's row of ``input_ids``
    embeddings: torch.Tensor  # (L, d_l): what the model puts at those positions, in the model's dtype, exactly
    always: torch.Tensor  # (L,) bool: positions kept whatever the selection (e.g. LLaVA-NeXT's newline tokens)


@dataclass(eq=False)
class ViewTokens(ImageTokens):
    """ImageTokens that know where they sit in their :class:`VisualInput`."""

    view: int = 0  # 0: the whole input or its first view; v > 0: its v-th crop / temporal slice
    source: VisualInput | None = None
    packed: torch.Tensor | None = None  # (N,) long: positions of these N tokens among ``source``'s L


def share_evenly(total: int, capacities: list[int]) -> list[int]:
    """Split ``total`` tokens evenly between views holding ``capacities`` tokens each.

    A view that cannot take its share keeps all its tokens and the rest is shared by the others; a remainder goes
    to the first views. Every view keeps at least one token, so the sum exceeds ``total`` only when ``total`` is
    smaller than the number of views.
    """
    alloc = [0] * len(capacities)
    remaining = min(total, sum(capacities))
    open_ = list(range(len(capacities)))
    while remaining > 0 and open_:
        share, extra = divmod(remaining, len(open_))
        full = [i for i in open_ if capacities[i] - alloc[i] <= share]
        if full:
            for i in full:
                remaining -= capacities[i] - alloc[i]
                alloc[i] = capacities[i]
            open_ = [i for i in open_ if i not in full]
            continue
        for rank, i in enumerate(open_):
            alloc[i] += share + (1 if rank < extra else 0)
        remaining = 0
    return [max(1, a) for a in alloc]


def shared_budgets(budget: Budget, images: list[ImageTokens], split: bool) -> list[int]:
    """Per-entry token counts. With ``split``, the entries of one :class:`VisualInput` share one budget computed on
    their total token count, evenly (:func:`share_evenly`); without it, each entry has the budget to itself."""
    if not split:
        return [budget.tokens_for(tokens.num_tokens) for tokens in images]
    groups: dict[int, list[int]] = {}
    for i, tokens in enumerate(images):
        groups.setdefault(id(tokens.source), []).append(i)
    out = [0] * len(images)
    for members in groups.values():
        capacities = [images[i].num_tokens for i in members]
        for i, k in zip(members, share_evenly(budget.tokens_for(sum(capacities)), capacities)):
            out[i] = k
    return out


def kept_per_input(images: list[ViewTokens], kept: list[torch.Tensor]) -> list[tuple[VisualInput, torch.Tensor]]:
    """Each input with its (L,) bool mask of kept positions, ordered by kind and index (the model's order)."""
    masks: dict[int, tuple[VisualInput, torch.Tensor]] = {}
    for tokens, indices in zip(images, kept):
        source = tokens.source
        if id(source) not in masks:
            masks[id(source)] = (source, source.always.clone())
        masks[id(source)][1][tokens.packed[indices.to(tokens.packed.device)]] = True
    return sorted(masks.values(), key=lambda pair: (pair[0].kind, pair[0].index))


def pruned_per_input(images: list[ViewTokens], kept: list[torch.Tensor],
                     merged: list[torch.Tensor | None] | None = None) -> list[PrunedEmbedding]:
    """Per input, in the model's order, the rows its placeholders receive after pruning: its kept embeddings
    (``always`` positions included) and then its entries' merged tokens in entry order, as ``encoder_outputs`` and
    ``append_merged`` place them."""
    extra: dict[int, list[torch.Tensor]] = {}
    first: dict[int, ViewTokens] = {}
    for tokens, tokens_merged in zip(images, merged if merged is not None else [None] * len(images)):
        first.setdefault(id(tokens.source), tokens)
        if tokens_merged is not None:
            extra.setdefault(id(tokens.source), []).append(tokens_merged)
    out = []
    for source, keep in kept_per_input(images, kept):
        keep = keep.to(source.embeddings.device)
        rows = source.embeddings[keep]  # (k - M, d_l)
        added = torch.cat(extra[id(source)]).to(rows.device) if id(source) in extra else rows[:0]  # (M, d_l)
        entry = first[id(source)]
        out.append(PrunedEmbedding(entry.sample, entry.image, source.kind, torch.cat([rows, added]),
                                   keep.nonzero().squeeze(-1), keep.numel(), added.shape[0]))
    return out


def drop_mask(input_ids: torch.Tensor, inputs: list[tuple[VisualInput, torch.Tensor]]) -> torch.Tensor:
    """(B, L) bool: the placeholder positions of tokens not kept."""
    drop = torch.zeros_like(input_ids, dtype=torch.bool)
    for source, keep in inputs:
        drop[source.sample, source.columns[~keep.to(source.columns.device)]] = True
    return drop


def encoder_outputs(inputs: list[tuple[VisualInput, torch.Tensor]]) -> dict[str, BaseModelOutputWithPooling]:
    """``mm_encoder_outputs`` holding, per kind, each input's kept embeddings (k_i, d_l) in the model's order."""
    out: dict[str, list[torch.Tensor]] = {}
    for source, keep in inputs:
        out.setdefault(source.kind, []).append(source.embeddings[keep.to(source.embeddings.device)])
    return {kind: BaseModelOutputWithPooling(pooler_output=embeds) for kind, embeds in out.items()}


def assign_to_prompts(counts: torch.Tensor, lengths: list[int], what: str) -> list[int]:
    """Which prompt each input belongs to, given the placeholder count of every prompt (B,) and the placeholder
    length of every input in batch order (inputs fill the prompts in order, as processors lay them out)."""
    owners: list[int] = []
    index = 0
    for sample, count in enumerate(counts.tolist()):
        used = 0
        while used < count and index < len(lengths):
            used += lengths[index]
            owners.append(sample)
            index += 1
        if used != count:
            raise InputError(f"prompt {sample} has {count} {what} placeholder tokens, which do not match the "
                             f"{what}s given (their token counts, in order: {lengths}); build inputs with the "
                             f"model's processor")
    if index != len(lengths):
        raise InputError(f"the prompts hold placeholders for {index} {what}s but {len(lengths)} were given")
    return owners


def placeholder_columns(input_ids: torch.Tensor, token_id: int, owners: list[int],
                        lengths: list[int]) -> list[torch.Tensor]:
    """The (L_i,) placeholder positions of every input, consecutive runs of its prompt's placeholders."""
    rows = {sample: (input_ids[sample] == token_id).nonzero().squeeze(-1) for sample in set(owners)}
    offsets: dict[int, int] = {}
    out = []
    for sample, length in zip(owners, lengths):
        start = offsets.get(sample, 0)
        out.append(rows[sample][start:start + length])
        offsets[sample] = start + length
    return out


def strip(inputs: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``inputs`` without ``keys`` (the vision inputs the pruned call must not repeat)."""
    return {key: value for key, value in inputs.items() if key not in keys}


def require_input_ids(inputs: dict[str, Any]) -> torch.Tensor:
    """``inputs["input_ids"]`` (B, L): the placeholders in it mark where the visual tokens go."""
    input_ids = inputs.get("input_ids")
    if input_ids is None:
        raise InputError("pruning needs `input_ids` (the image placeholders mark where visual tokens go); "
                         "inputs_embeds alone cannot be pruned")
    return input_ids


def placeholder_counts(input_ids: torch.Tensor, token_id: int, what: str, given: bool, missing: str) -> torch.Tensor:
    """(B,) how many ``what`` placeholders each prompt holds. When the visual inputs are not ``given``, any
    placeholder is an error naming the ``missing`` inputs: a prompt that announces an image must bring it."""
    counts = (input_ids == token_id).sum(dim=1)
    if not given and int(counts.sum()):
        raise InputError(f"the prompts hold {int(counts.sum())} {what} placeholder tokens (id {token_id}) but no "
                         f"{missing} were given")
    return counts


def number_in_prompt(found: list[tuple[int, int, Any]]) -> list[Any]:
    """Entries numbered per prompt in order of appearance: ``found`` holds (sample, first placeholder column,
    entry) with entries that have ``view`` (slices of one input share its number) and a settable ``image``."""
    found.sort(key=lambda item: (item[0], item[1], item[2].view))
    counter: dict[int, int] = {}
    for sample, _, entry in found:
        if entry.view == 0:
            counter[sample] = counter.get(sample, -1) + 1
        entry.image = counter[sample]
    return [entry for *_, entry in found]


#: the signal of the prompt's text (``ImageTokens.extras["text_embeddings"]``), which every adapter provides
TEXT_EMBEDDINGS = "text_embeddings"


def visual_placeholder_ids(config: Any) -> list[int]:
    """The ids of the tokens that stand for visual tokens in prompts (image and video placeholders), from the
    model's config (top level or its text config)."""
    ids = []
    for source in (config, getattr(config, "text_config", None)):
        for key in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
            value = getattr(source, key, None) if source is not None else None
            if isinstance(value, int) and value not in ids:
                ids.append(value)
    return ids


def prompt_text_embeddings(model: torch.nn.Module, inputs: dict[str, Any], dtype: torch.dtype) -> list[torch.Tensor]:
    """The language model's own input embeddings of each prompt's text tokens: [(T_b, d_l)] per prompt, in
    ``dtype``. Text tokens are every token of ``input_ids`` that is neither a visual placeholder nor padding
    (``attention_mask`` 0); the chat template's special tokens count as text, as in OpenVINO's CDPruner recipe."""
    input_ids = inputs["input_ids"]  # (B, L)
    mask = inputs.get("attention_mask")
    text = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
    placeholders = torch.tensor(visual_placeholder_ids(model.config), dtype=input_ids.dtype, device=input_ids.device)
    text = text & ~torch.isin(input_ids, placeholders)  # (B, L)
    table = model.get_input_embeddings()
    return [table(input_ids[b][text[b]]).to(dtype) for b in range(input_ids.shape[0])]


def with_text_embeddings(model: torch.nn.Module, inputs: dict[str, Any], images: list[Any], dtype: torch.dtype,
                         extras: frozenset[str]) -> list[Any]:
    """``images`` with ``extras["text_embeddings"]`` (T, d_l) of their prompt when a scorer or selector asked for
    it (every entry of one prompt shares the same tensor)."""
    if TEXT_EMBEDDINGS not in extras or not images:
        return images
    with torch.no_grad():
        per_prompt = prompt_text_embeddings(model, inputs, dtype)
    for tokens in images:
        tokens.extras[TEXT_EMBEDDINGS] = per_prompt[tokens.sample]
    return images


def pad_token_id(model: torch.nn.Module) -> int:
    """The id to pad prompts with (masked out anyway, so any id works when the model names none)."""
    for source in (model.generation_config, getattr(model.config, "text_config", None), model.config):
        pad = getattr(source, "pad_token_id", None)
        if isinstance(pad, int):
            return pad
    return 0


def original_positions(inputs: dict[str, Any]) -> torch.Tensor:
    """(B, L) long: the 1-D rotary position of every column of the unpruned prompt: the caller's ``position_ids``
    when given, else what ``generate`` computes from the padding mask (count of real tokens before, padding at 0).

    A forward pass without ``position_ids`` numbers a left-padded row from its first padding column instead; that
    shifts the whole row by a constant, which rotary attention does not see (it depends on differences only).
    """
    input_ids = inputs["input_ids"]
    given = inputs.get("position_ids")
    if isinstance(given, torch.Tensor):
        if given.ndim != 2 or given.shape[-1] != input_ids.shape[1]:
            raise InputError(f"`position_ids` of shape {tuple(given.shape)}: positions: original needs (batch, "
                             f"length) 1-D positions matching `input_ids` {tuple(input_ids.shape)}")
        return given.expand(input_ids.shape[0], -1)
    mask = inputs.get("attention_mask")
    if mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 0)


def with_positions(inputs: dict[str, Any], positions: str) -> dict[str, Any]:
    """``inputs`` with ``position_ids`` of the unpruned prompt (:func:`original_positions`) and an explicit
    ``attention_mask`` when ``positions`` is ``"original"``, for :func:`drop_columns` to gather at the kept columns;
    unchanged for ``"contiguous"``. The mask is always passed with such positions: without one, transformers reads
    positions with gaps as several packed sequences."""
    if positions == "contiguous":
        return inputs
    if positions != "original":
        raise InputError(f"unknown positions mode {positions!r}; expected 'contiguous' or 'original'")
    out = dict(inputs)
    out["position_ids"] = original_positions(inputs)
    if out.get("attention_mask") is None:
        out["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return out


def drop_columns(inputs: dict[str, Any], drop: torch.Tensor, pad_id: int) -> dict[str, Any]:
    """Remove the ``drop`` (B, L) positions from every per-token tensor of ``inputs`` and re-pad the rows to one
    length, on the side the batch is padded (left when unsure, as generation wants).

    Each row keeps its unpadded tokens; the width is the longest row plus the padding every row shared, so with
    nothing dropped the inputs come back exactly as they were.
    """
    input_ids = inputs["input_ids"]
    batch, length = input_ids.shape
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(input_ids)
    left = bool((mask[:, 0] == 0).any()) or not bool((mask[:, -1] == 0).any())
    real = mask.bool() & ~drop  # (B, L): tokens that stay
    padding = int((mask == 0).sum(dim=1).min())
    width = int(real.sum(dim=1).max()) + padding
    per_token = {key: value for key, value in inputs.items()
                 if isinstance(value, torch.Tensor) and value.shape[:2] == (batch, length)}
    per_token["attention_mask"] = mask
    out = {}
    for key, value in per_token.items():
        fill = pad_id if key == "input_ids" else 0
        rows = []
        for b in range(batch):
            row = value[b][real[b]]
            pad = row.new_full((width - row.shape[0], *row.shape[1:]), fill)
            rows.append(torch.cat([pad, row] if left else [row, pad]))
        out[key] = torch.stack(rows)
    return out
