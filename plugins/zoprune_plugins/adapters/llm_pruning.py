"""Pruning visual tokens inside a decoder-only language model (FastV's hook point), on stock transformers layers.

:class:`InsideLLM` is a context manager that puts forward pre-hooks on the decoder layers of a Llama-style language
model (``layers[i]`` with ``input_layernorm`` and ``self_attn.{q_proj, k_proj}``; LlamaModel, Qwen2Model, the
Qwen2-VL / Qwen2.5-VL text models):

* layers ``0 .. K-1`` run unchanged on every token;
* before layer ``K-1`` runs in the prefill, the attention its text queries pay every key is computed from the
  hidden state entering it (norm, q/k projections, RoPE, grouped-query heads, the model's own causal + padding
  mask; softmax in float32) -- the row eager attention would return, with the model on SDPA;
* in the same pass every token's key L1 norm in layer ``K-1`` is computed (post-RoPE keys, DART's pivot signal);
* once layer ``K-1`` has run, the caller's ``select`` callback gets one :class:`~zoprune.ImageTokens` per image
  (``extras``: ``llm_attention``, ``llm_attention_text``, ``llm_key_norm`` (N,), ``llm_states`` (N, d) = layer
  ``K-1``'s output through the model's final norm, and ``llm_text_key_norm`` (T,) / ``llm_text_states`` (T, d) of
  the prompt's text tokens after the image, or all its text tokens when none follows) and returns the kept indices;
* a pre-hook on layer ``K`` gathers the kept columns of the hidden states (each prompt keeps its text and its kept
  image tokens in order, re-padded on the left to one width); every layer ``>= K`` gets the matching rows and
  columns of the 4D mask and the position embeddings of the kept tokens' *original* positions.

Positions are whatever the model computed for the unpruned input: the hooks only gather the (cos, sin) it hands
every layer, per column, so 3-D M-RoPE (Qwen2-VL / Qwen2.5-VL, whose rotary embedding already recombines the
temporal, height and width sections per column) needs nothing more, and decode steps keep the model's own positions
and rope deltas.

Layers ``>= K`` therefore compute on, and cache, the kept tokens only, while layers ``< K`` cache every token. In
the decode steps of ``generate`` the model builds its mask against layer 0's (full) cache; the hooks give layers
``>= K`` that mask's kept key columns. Only ``eager`` and ``sdpa`` attention are supported (the hooks rewrite 4D
masks, which flash and flex attention do not use).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

from zoprune import ImageTokens, InputError, UnsupportedModelError
from zoprune_plugins.adapters.common import ViewTokens

SUPPORTED_ATTENTION = ("eager", "sdpa")


@dataclass
class ImageColumns:
    """Where one image's N tokens (or one view's, one frame's) sit in the language model's input: prompt
    ``sample``, columns (N,). Entries with the same ``source`` object share one budget when the adapter splits
    budgets (``token_budgets``); ``view`` numbers them."""

    sample: int
    image: int
    columns: torch.Tensor  # (N,) long
    source: Any = None  # the image or video this entry is part of (None: the entry is the whole of it)
    view: int = 0


def inside_language_model(language_model: torch.nn.Module, inputs: dict[str, Any], input_ids: torch.Tensor,
                          layer: int, images: list["ImageColumns"],
                          select: Callable[[list[ImageTokens]], list[torch.Tensor]], dtype: torch.dtype,
                          always: torch.Tensor | None = None, never: torch.Tensor | None = None) -> Any:
    """:class:`InsideLLM` on ``language_model``'s decoder layers for ``input_ids`` (B, L), or a null context when
    there are no image entries (text only: nothing to prune). What adapters return from ``inside_llm``."""
    if not images:
        return contextlib.nullcontext()
    return InsideLLM(language_model.layers, layer, images, inputs.get("attention_mask"), input_ids.shape[1],
                     input_ids.shape[0], select, dtype, language_model.config._attn_implementation,
                     always=always, never=never, norm=getattr(language_model, "norm", None))


def check_decoder_layer(layer: torch.nn.Module) -> None:
    attn = getattr(layer, "self_attn", None)
    needed = ("q_proj", "k_proj", "head_dim", "scaling", "num_key_value_groups")
    if attn is None or not hasattr(layer, "input_layernorm") or not all(hasattr(attn, a) for a in needed):
        raise UnsupportedModelError(
            f"{type(layer).__name__} is not a Llama-style decoder layer (input_layernorm, self_attn with q_proj/"
            f"k_proj/head_dim/scaling); visual tokens cannot be pruned inside this language model")


def attention_rows(layer: torch.nn.Module, hidden: torch.Tensor, allowed: torch.Tensor,
                   position_embeddings: tuple[torch.Tensor, torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
    """Softmax attention of the ``queries`` columns to every key in one decoder layer, mean over heads.

    ``hidden`` (B, L, d) is the hidden state entering ``layer``; ``allowed`` (B, L, L) bool the model's mask (causal
    and padding); ``position_embeddings`` the (cos, sin) the layer receives; ``queries`` (B, Q) long columns.
    Returns (B, Q, L) float32: exactly eager attention's weights at those rows.
    """
    attn = layer.self_attn
    rope = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if rope is None:
        raise UnsupportedModelError(f"cannot find the rotary embedding of {type(attn).__module__}")
    batch, length = hidden.shape[:2]
    x = layer.input_layernorm(hidden)  # (B, L, d)
    rows = torch.arange(batch, device=hidden.device)[:, None]
    q = attn.q_proj(x[rows, queries]).view(batch, queries.shape[1], -1, attn.head_dim)  # (B, Q, H, hd)
    k = attn.k_proj(x).view(batch, length, -1, attn.head_dim)  # (B, L, Hkv, hd)
    if hasattr(attn, "q_norm"):  # Qwen3-style per-head norms
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = (t.expand(batch, *t.shape[1:]) for t in position_embeddings)
    q = rope(q, q, cos[rows, queries], sin[rows, queries])[0]
    k = rope(k, k, cos, sin)[1]
    k = k.repeat_interleave(attn.num_key_value_groups, dim=1)  # (B, H, L, hd), as repeat_kv lays heads out
    logits = (q @ k.transpose(-1, -2)).float() * attn.scaling  # (B, H, Q, L)
    logits = logits.masked_fill(~allowed[rows, queries][:, None], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)


def key_norms(layer: torch.nn.Module, hidden: torch.Tensor,
              position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """L1 norm of every token's key in one decoder layer, all key heads together: the keys attention uses (norm,
    k projection, per-head norm where the model has one, RoPE). ``hidden`` (B, L, d) enters ``layer``; returns
    (B, L) float32. (Repeating the key heads for grouped-query attention, as DART's code does before the norm,
    multiplies every norm by the same group count: the order is the same.)"""
    attn = layer.self_attn
    rope = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if rope is None:
        raise UnsupportedModelError(f"cannot find the rotary embedding of {type(attn).__module__}")
    batch, length = hidden.shape[:2]
    k = attn.k_proj(layer.input_layernorm(hidden)).view(batch, length, -1, attn.head_dim)  # (B, L, Hkv, hd)
    if hasattr(attn, "k_norm"):  # Qwen3-style per-head norms
        k = attn.k_norm(k)
    cos, sin = (t.expand(batch, *t.shape[1:]) for t in position_embeddings)
    k = rope(k.transpose(1, 2), k.transpose(1, 2), cos, sin)[1]  # (B, Hkv, L, hd), post-RoPE
    return k.float().abs().sum(dim=(1, 3))


def allowed_from_mask(mask: torch.Tensor | None, batch: int, q: int, kv: int, device: torch.device) -> torch.Tensor:
    """A model's 4D attention mask (bool, or float with 0 = attend) as (B, q, kv) bool; None means plain causal."""
    if mask is None:
        i = torch.arange(q, device=device)[:, None] + (kv - q)
        return (torch.arange(kv, device=device)[None] <= i).expand(batch, q, kv)
    if mask.ndim != 4 or mask.shape[-2:] != (q, kv):
        raise InputError(f"unexpected attention mask of shape {tuple(mask.shape)} for {q} queries and {kv} keys")
    mask = mask[:, 0]
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return allowed.expand(batch, q, kv)


def mask_like(allowed: torch.Tensor, like: torch.Tensor | None, implementation: str,
              dtype: torch.dtype) -> torch.Tensor:
    """(B, q, kv) bool -> a 4D mask in the format the model uses (bool for SDPA, additive float for eager)."""
    if (like is not None and like.dtype == torch.bool) or (like is None and implementation == "sdpa"):
        return allowed[:, None]
    dtype = like.dtype if like is not None else dtype
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


class InsideLLM:
    """The context manager described in the module docstring.

    ``layers``: the language model's decoder layers; ``k``: the first layer that sees only kept tokens (1 <= k <
    len(layers)); ``images``: every image's columns, in batch order; ``attention_mask``: the (B, L) padding mask of
    the inputs (None: no padding); ``select(images) -> kept`` is called once, in the prefill. ``always`` and
    ``never`` (B, L) bool mark visual columns that no entry scores (LLaVA-NeXT's newline tokens): kept whatever
    the selection, or dropped whatever it; neither kind counts as text for the ``llm_attention_text`` queries.
    """

    def __init__(self, layers: torch.nn.ModuleList, k: int, images: list[ImageColumns],
                 attention_mask: torch.Tensor | None, input_length: int, batch: int,
                 select: Callable[[list[ImageTokens]], list[torch.Tensor]], dtype: torch.dtype, implementation: str,
                 always: torch.Tensor | None = None, never: torch.Tensor | None = None,
                 norm: torch.nn.Module | None = None):
        if implementation not in SUPPORTED_ATTENTION:
            raise UnsupportedModelError(
                f"pruning inside the language model needs eager or sdpa attention, not {implementation!r}; load "
                f"the model with attn_implementation='sdpa'")
        if not 1 <= k < len(layers):
            raise InputError(f"layer {k} is outside the language model's 1..{len(layers) - 1} decoder layers")
        check_decoder_layer(layers[k - 1])
        if any(getattr(getattr(layer, "self_attn", None), "sliding_window", None) for layer in layers):
            # such layers get their own (sliding) mask, which the hooks would replace with the full one
            raise UnsupportedModelError("pruning inside the language model does not support sliding-window "
                                        "attention layers")
        self.layers, self.k, self.images, self.select = layers, k, images, select
        self.padding = attention_mask.bool() if attention_mask is not None else None
        self.always, self.never = always, never  # (B, L) bool or None
        self.norm = norm if norm is not None else torch.nn.Identity()  # the model's final norm (DART's states)
        self.pending: dict[str, Any] | None = None  # the prefill's signals, between layer K-1's two hooks
        self.length, self.batch, self.dtype, self.implementation = input_length, batch, dtype, implementation
        self.handles: list[Any] = []
        self.index: torch.Tensor | None = None  # (B', W) long: columns of the full sequence kept, per row
        self.valid: torch.Tensor | None = None  # (B', W) bool: False at the re-padding slots
        self.current: dict[str, Any] = {}  # what the layers >= k get in the pass under way
        self.prefill = False

    def __enter__(self) -> "InsideLLM":
        # the hooks sit on the shared model's layers: they act only on this thread's forward passes, so other
        # threads calling the same model meanwhile (pruned by other pipelines or not at all) run unchanged
        self.thread = threading.get_ident()
        self.handles.append(self.layers[self.k - 1].register_forward_pre_hook(self._before_scoring_layer,
                                                                            with_kwargs=True))
        self.handles.append(self.layers[self.k - 1].register_forward_hook(self._after_scoring_layer))
        for layer in self.layers[self.k:]:
            self.handles.append(layer.register_forward_pre_hook(self._before_pruned_layer, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    # -- the layer before pruning: select (prefill) and prepare what the later layers get (every pass)
    def _before_scoring_layer(self, module, args, kwargs=None):
        # kwargs is None only for another thread's forward pass that meets this hook while torch registers or
        # removes it (the hook and its with_kwargs flag are two dict entries): not ours either
        if kwargs is None or threading.get_ident() != self.thread:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = kwargs.get("attention_mask")
        cos, sin = kwargs["position_embeddings"]
        rows, q = hidden.shape[:2]
        if self.index is None:
            if q != self.length or rows % self.batch:
                raise InputError(f"the language model's first pass has {rows} x {q} tokens, expected "
                                 f"{self.batch} x {self.length} (the inputs given to the pruned model)")
            # the signals read from what enters layer K-1; the selection waits for the layer's output
            self.pending = self._signals(module, hidden, mask, (cos, sin))
            self.pending.update(mask=mask, cos=cos, sin=sin, position_ids=kwargs.get("position_ids"))
        else:
            self.prefill = False
            # keys of layer 0 (which caches every token) in this pass; the mask, when there is one, says the same
            kv = mask.shape[-1] if isinstance(mask, torch.Tensor) else self.seen + q
            self.seen = kv
            index = self.index.expand(rows, -1) if self.index.shape[0] != rows else self.index
            valid = self.valid.expand(rows, -1) if self.valid.shape[0] != rows else self.valid
            extra = torch.arange(self.length, kv, device=hidden.device).expand(rows, -1)
            columns = torch.cat([index, extra], dim=1)
            allowed = allowed_from_mask(mask, rows, q, kv, hidden.device).gather(
                2, columns[:, None, :].expand(-1, q, -1))
            allowed = allowed & torch.cat([valid, torch.ones_like(extra, dtype=torch.bool)], dim=1)[:, None, :]
            new_mask = None if mask is None and bool(valid.all()) else mask_like(allowed, mask, self.implementation,
                                                                                   hidden.dtype)
            self.current = {"attention_mask": new_mask}
        return None

    def _after_scoring_layer(self, module, args, output):
        if self.pending is None or threading.get_ident() != self.thread:
            return None
        pending, self.pending = self.pending, None
        hidden_out = output[0] if isinstance(output, tuple) else output  # (B', L, d): what enters layer K
        mask, cos, sin = pending["mask"], pending["cos"], pending["sin"]
        rows, q = hidden_out.shape[:2]
        self._choose(pending, hidden_out)
        self.prefill = True
        allowed = allowed_from_mask(mask, rows, q, q, hidden_out.device)
        index, valid = self.index, self.valid
        allowed = allowed.gather(1, index[:, :, None].expand(-1, -1, q)).gather(
            2, index[:, None, :].expand(-1, index.shape[1], -1))
        allowed = allowed & valid[:, None, :]
        allowed = allowed | torch.diag_embed(~valid)  # padding slots attend to themselves: no empty rows
        self.current = {
            "attention_mask": mask_like(allowed, mask, self.implementation, hidden_out.dtype),
            "position_embeddings": tuple(_gather_tokens(t.expand(rows, *t.shape[1:]), index) for t in (cos, sin)),
            "position_ids": _gather_positions(pending["position_ids"], index, rows),
        }
        return None

    def _signals(self, layer, hidden, mask, position_embeddings) -> dict[str, Any]:
        """What the selectors read from the hidden state entering layer K-1 (one row per prompt): the attention
        rows of the last and the text queries (FastV), every token's key L1 norm (DART), the columns' roles."""
        rows, length = hidden.shape[:2]
        expand = rows // self.batch
        device = hidden.device
        padding = self.padding.to(device) if self.padding is not None else torch.ones(
            self.batch, length, dtype=torch.bool, device=device)
        is_image = torch.zeros(self.batch, length, dtype=torch.bool, device=device)
        for entry in self.images:
            is_image[entry.sample, entry.columns.to(device)] = True
        never = self.never.to(device) if self.never is not None else torch.zeros_like(is_image)
        always = self.always.to(device) if self.always is not None else torch.zeros_like(is_image)
        text = padding & ~is_image & ~never & ~always
        last = torch.where(padding, torch.arange(length, device=device), -1).max(dim=1).values  # (B,)
        # queries: the last real token, then every text token (padded with the last one)
        counts = text.sum(dim=1)
        width = int(counts.max()) if len(counts) else 0
        queries = last[:, None].repeat(1, 1 + width)
        for b in range(self.batch):
            queries[b, 1:1 + int(counts[b])] = text[b].nonzero().squeeze(-1)
        first = torch.arange(self.batch, device=device) * expand  # one row per prompt (beams repeat prompts)
        allowed = allowed_from_mask(mask, rows, length, length, device)[first]
        cos, sin = (t.expand(rows, *t.shape[1:])[first] for t in position_embeddings)
        attention = attention_rows(layer, hidden[first], allowed, (cos, sin), queries)  # (B, 1 + T, L)
        last_row = attention[:, 0]
        text_rows = attention[:, 1:]
        weights = (torch.arange(width, device=device)[None] < counts[:, None]).float()
        text_mean = (text_rows * weights[:, :, None]).sum(dim=1) / counts.clamp(min=1)[:, None]
        return {"first": first, "expand": expand, "padding": padding, "never": never, "text": text,
                "entering": hidden, "last_row": last_row, "text_mean": text_mean,
                "key_norm": key_norms(layer, hidden[first], (cos, sin))}  # (B, L)

    def _choose(self, pending: dict[str, Any], hidden_out: torch.Tensor) -> None:
        """Call ``select`` with every entry's tokens and signals, and set the kept columns (``index``, ``valid``)."""
        first, expand, padding, never, text = (pending[key] for key in ("first", "expand", "padding", "never",
                                                                        "text"))
        hidden, last_row, text_mean, key_norm = (pending[key] for key in ("entering", "last_row", "text_mean",
                                                                          "key_norm"))
        length, device = hidden.shape[1], hidden.device
        states_out = self.norm(hidden_out[first]).to(self.dtype)  # (B, L, d): layer K-1's output, final-normed
        tokens = []
        for entry in self.images:
            columns = entry.columns.to(device)
            states = hidden[first[entry.sample], columns]
            after = text[entry.sample] & (torch.arange(length, device=device) > columns.max())
            text_columns = (after if bool(after.any()) else text[entry.sample]).nonzero().squeeze(-1)
            tokens.append(ViewTokens(
                features=states.to(self.dtype), embeddings=states.to(self.dtype), model_embeddings=states,
                projector=lambda x: x, sample=entry.sample, image=entry.image, grid=None,
                extras={"llm_attention": last_row[entry.sample, columns],
                        "llm_attention_text": text_mean[entry.sample, columns],
                        "llm_key_norm": key_norm[entry.sample, columns],
                        "llm_states": states_out[entry.sample, columns],
                        "llm_text_key_norm": key_norm[entry.sample, text_columns],
                        "llm_text_states": states_out[entry.sample, text_columns]},
                view=entry.view, source=entry.source))
        kept = self.select(tokens)

        keep = padding & ~never
        for entry, indices in zip(self.images, kept):
            dropped = torch.ones(entry.columns.numel(), dtype=torch.bool, device=device)
            dropped[indices.to(device)] = False
            keep[entry.sample, entry.columns.to(device)[dropped]] = False
        width = int(keep.sum(dim=1).max())
        index = torch.zeros(self.batch, width, dtype=torch.long, device=device)
        valid = torch.zeros(self.batch, width, dtype=torch.bool, device=device)
        for b in range(self.batch):
            columns = keep[b].nonzero().squeeze(-1)
            index[b, width - columns.numel():] = columns
            index[b, :width - columns.numel()] = columns[0] if columns.numel() else 0
            valid[b, width - columns.numel():] = True
        self.index = index.repeat_interleave(expand, dim=0)
        self.valid = valid.repeat_interleave(expand, dim=0)
        self.seen = length

    # -- every layer from k on: the kept tokens only
    def _before_pruned_layer(self, module, args, kwargs=None):
        if self.index is None or kwargs is None or threading.get_ident() != self.thread:
            return None
        if self.prefill and module is self.layers[self.k]:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            args = (_gather_tokens(hidden, self.index),) + tuple(args[1:])
        for key, value in self.current.items():
            if key in kwargs or key == "attention_mask":
                kwargs[key] = value
        return args, kwargs


def _gather_tokens(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) -> (B, W, ...) at ``index`` (B, W)."""
    shape = index.shape + tensor.shape[2:]
    return tensor.gather(1, index.view(*index.shape, *([1] * (tensor.ndim - 2))).expand(shape))


def _gather_positions(position_ids: torch.Tensor | None, index: torch.Tensor, rows: int) -> torch.Tensor | None:
    if position_ids is None:
        return None
    if position_ids.ndim != 2:
        raise InputError(f"position ids of shape {tuple(position_ids.shape)} are not supported by in-LLM pruning")
    return position_ids.expand(rows, -1).gather(1, index)
