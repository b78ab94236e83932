"""``prune(model, config)``: the one verb. It returns a :class:`PrunedModel` whose ``generate`` and ``__call__``
take what the model's own take and run the language model on the kept visual tokens only."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoprune.config import PipelineConfig
from zoprune.errors import (ConfigError, InputError, NumericalError, PluginError, UnsupportedModelError,
                             ZopruneError)
from zoprune.interfaces import Context, ImageTokens, Merge, ModelAdapter, PrunedEmbedding, Scorer, Selector
from zoprune.registry import get_registry


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


@dataclass(eq=False)
class _MemoEntry:
    """One input's visual tokens and the scores computed on them so far."""

    key: tuple
    inputs: tuple  # holds the keyed tensors, so their ids cannot be reused while the entry lives
    images: list[ImageTokens]
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # image index -> (N,) scores


class _Memo:
    """The last inputs' visual tokens and scores. Scores depend on the image and the seed, not on the budget, so a
    PrunedModel and its :meth:`PrunedModel.at_budget` twins share one memo and a budget sweep scores once.

    Safe to share between threads: an entry is keyed on the identity and in-place version of every input tensor
    (and holds those tensors, so no other tensor can take their ids while it is kept), and it is replaced whole
    under a lock, so a call either finds the entry of its own inputs or makes a new one; it never sees another
    request's tokens or scores. Two threads on the same input tensors share an entry and may both score an image:
    they compute the same scores (seeded per image), and either one is kept.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: _MemoEntry | None = None

    def __getstate__(self) -> dict:  # a copy (copy.deepcopy, pickle) starts empty, with a lock of its own
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def find(self, key: tuple) -> _MemoEntry | None:
        """The entry of ``key``; None on a miss (or when ``key`` is empty: inputs that cannot be compared)."""
        with self._lock:
            entry = self._entry
        return entry if key and entry is not None and entry.key == key else None

    def store(self, key: tuple, inputs: dict[str, Any], images: list[ImageTokens]) -> _MemoEntry:
        entry = _MemoEntry(key, tuple(inputs.values()), images)
        if key:
            with self._lock:
                self._entry = entry
        return entry

    @staticmethod
    def key_of(inputs: dict[str, Any]) -> tuple:
        # identity and in-place version of every tensor, and plain values: anything changed or new is a miss
        key = []
        for name, value in sorted(inputs.items()):
            if isinstance(value, torch.Tensor):
                key.append((name, id(value), value._version))
            elif isinstance(value, (int, float, str, bool, type(None))):
                key.append((name, value))
            else:
                return ()  # something we cannot compare: never reuse
        return tuple(key)


class _PerThread(threading.local):
    """State of the calls made from one thread (``threading.local``: every thread sees its own)."""

    def __init__(self) -> None:
        self.selection: list[Selection] = []


class _ProjectorCopies:
    """The projector copied to scoring dtypes, per (dtype, device); shared by budget twins, built once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._copies: dict[tuple[torch.dtype, torch.device], torch.nn.Module] = {}

    def __getstate__(self) -> dict:  # a copy starts empty (the copies are rebuilt on demand), with its own lock
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def get(self, projector: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        weight = next(projector.parameters())
        if weight.dtype == dtype:
            return projector
        key = (dtype, weight.device)  # the model may have moved since the copy was made
        with self._lock:
            if key not in self._copies:
                self._copies[key] = copy.deepcopy(projector).to(dtype).eval()
            return self._copies[key]


class PrunedModel:
    """A model with a pruning pipeline in front of its language model. The wrapped model is not modified.

    One PrunedModel (and its :meth:`at_budget` twins) may serve several threads at once: a call keeps its state
    in local variables, ``last_selection`` is kept per thread, the memo of scores is keyed on each call's own
    input tensors, and an in-LLM selector's hooks act only on the forward pass of the thread that placed them.
    A call that raises leaves the model as it was (no hooks, no changed weights) and ``last_selection`` empty.
    """

    def __init__(self, model: torch.nn.Module, config: PipelineConfig, adapter: ModelAdapter,
                 scorer: Scorer | None, selector: Selector):
        self.model = model
        self.config = config
        self.adapter = adapter
        self.scorer = scorer
        self.selector = selector
        self._per_thread = _PerThread()
        self._projectors = _ProjectorCopies()
        self._memo = _Memo()

    def __getstate__(self) -> dict:
        # copy.deepcopy and pickle: the per-thread state stays behind (a copy starts with no selection)
        return {key: value for key, value in self.__dict__.items() if key != "_per_thread"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._per_thread = _PerThread()

    def __repr__(self) -> str:
        scorer = self.scorer.name if self.scorer is not None else None
        return (f"PrunedModel({type(self.model).__name__}, adapter={self.adapter.name!r}, scorer={scorer!r}, "
                f"selector={self.selector.name!r}, budget={self.config.budget!r})")

    @property
    def last_selection(self) -> list[Selection]:
        """One entry per image of this thread's last ``generate`` / ``__call__`` / ``select`` / ``prepare`` call, in
        batch order; empty when that call raised. Kept per thread, so threads sharing the model each read their
        own call's selection (``select`` also returns it)."""
        return self._per_thread.selection

    @last_selection.setter
    def last_selection(self, value: list[Selection]) -> None:
        self._per_thread.selection = value

    def at_budget(self, budget: Any) -> "PrunedModel":
        """The same pipeline keeping ``budget`` tokens per image (any form ``PipelineConfig.budget`` takes).

        The twin shares this model's scores of the last inputs: calling it on the same input tensors scores nothing
        again, so a sweep over budgets costs one scoring pass per batch.
        """
        twin = PrunedModel(self.model, resolve_config(self.config, budget=budget), self.adapter, self.scorer,
                           self.selector)
        twin._projectors, twin._memo = self._projectors, self._memo
        return twin

    @property
    def device(self) -> torch.device:
        """The device of the wrapped model's first parameter."""
        return next(self.model.parameters()).device

    def _projector(self, dtype: torch.dtype) -> torch.nn.Module:
        # the perturbed passes run in the scoring dtype; an fp32 copy of the projector is small next to the model
        return self._projectors.get(self.adapter.projector(), dtype)

    @torch.no_grad()
    def select(self, **inputs: Any) -> list[Selection]:
        """Score and select the visual tokens of every image in ``inputs`` without running the language model.

        ``inputs`` are the processor's outputs (``input_ids`` (B, L), ``pixel_values``, ...). Returns one
        :class:`Selection` per image, in batch order, and keeps it in ``last_selection``. A selector that prunes
        inside the language model needs its first layers, so for one the model's forward pass runs.
        """
        self.last_selection = []
        if self.selector.stage == "in_llm":  # the selection needs the language model's first layers
            self(**inputs)
            return self.last_selection
        entry = self._extract_entry(self._resized(inputs))
        selections = self._select(entry.images, entry.scores)
        self.last_selection = selections
        return selections

    def _inside_llm(self, inputs: dict[str, Any], chosen: list[Selection]) -> Any:
        """The adapter's context that selects inside the language model (for an "in_llm" selector); it fills
        ``chosen`` when the language model's prefill reaches the selector's layer."""
        check_inputs(inputs)

        def select(images: list[ImageTokens]) -> list[torch.Tensor]:
            chosen[:] = self._select(images, stage="in_llm")
            return [s.kept for s in chosen]

        dtype = self.config.torch_dtype(next(self.model.parameters()).dtype)
        return self.adapter.inside_llm(inputs, self.selector.llm_layer, select, dtype)

    def _extract(self, inputs: dict[str, Any]) -> list[ImageTokens]:
        """Every image's tokens (from the memo when ``inputs`` are the tensors of the last call)."""
        return self._extract_entry(inputs).images

    def _extract_entry(self, inputs: dict[str, Any]) -> _MemoEntry:
        check_inputs(inputs)
        requires = _requires(self.scorer, self.selector)
        key = _Memo.key_of(inputs)
        key = (key, requires) if key else ()
        entry = self._memo.find(key)
        if entry is not None:
            return entry
        dtype = self.config.torch_dtype(next(self.adapter.projector().parameters()).dtype)
        images = self.adapter.extract(inputs, self._projector(dtype), dtype, requires)
        return self._memo.store(key, inputs, images)

    def _select(self, images: list[ImageTokens], cached: dict[int, torch.Tensor] | None = None,
                stage: str = "pre_llm") -> list[Selection]:
        """Score and select every entry. ``cached``: scores by entry index, read and filled (the memo's); ``stage``
        says where the tokens come from, for error messages."""
        selections = []
        budgets = self.adapter.token_budgets(self.config.budget, images)
        for index, (tokens, k) in enumerate(zip(images, budgets)):
            given = cached.get(index) if cached is not None else None
            selection, scores = select_entry(self.scorer, self.selector, tokens, k, self.config.seed, given,
                                             self.adapter, stage)
            if cached is not None and scores is not None:
                cached[index] = scores
            selections.append(selection)
        return selections

    def _selected(self, inputs: dict[str, Any]
                  ) -> tuple[list[ImageTokens], list[Selection], list[torch.Tensor], list[torch.Tensor | None] | None]:
        """Every entry's tokens, selections, kept indices (on the embeddings' device) and merged tokens (None when
        no entry has any), nothing stored on ``self``."""
        entry = self._extract_entry(inputs)
        images = entry.images
        if not images:
            return [], [], [], None
        selections = self._select(images, entry.scores)
        kept = [s.kept.to(images[i].model_embeddings.device) for i, s in enumerate(selections)]
        merged = None if all(s.merged is None for s in selections) else [s.merged for s in selections]
        return images, selections, kept, merged

    def _resized(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` with the images shrunk to about the budget's tokens, for a selector with ``resizes_images``
        (the adapter's ``downsample``); otherwise ``inputs`` themselves."""
        if not self.selector.resizes_images:
            return inputs
        check_inputs(inputs)
        _check_resizable(self.selector, self.adapter, self.config)  # at_budget twins may hold a ratio budget
        return self.adapter.downsample(inputs, self.config.budget.keep)

    def _prepare(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], list[Selection]]:
        """The pruned model keyword arguments and the selections they hold (nothing stored on ``self``)."""
        if self.selector.stage == "in_llm":
            return dict(inputs), []
        inputs = self._resized(inputs)
        images, selections, kept, merged = self._selected(inputs)
        if not images:  # text-only inputs: nothing to prune
            return dict(inputs), []
        # the default call keeps the signature adapters have always had; only "original" adds its keyword
        extra: dict[str, Any] = {} if self.config.positions == "contiguous" else {"positions": self.config.positions}
        if merged is not None:
            extra["merged"] = merged
            if self.adapter.merge_groups:
                extra["groups"] = [s.groups for s in selections]
        return self.adapter.pruned_inputs(inputs, images, kept, **extra), selections

    @torch.no_grad()
    def embed(self, **inputs: Any) -> list[PrunedEmbedding]:
        """The pruned visual embeddings of every image in ``inputs``, without running the language model.

        ``inputs`` are the processor's outputs, as for ``generate`` (the prompt is part of them, so a method that
        looks at the question sees it). Returns one :class:`~zoprune.PrunedEmbedding` per image (or video), in the
        order the model consumes them: its (k, d_l) embeddings in the model's dtype, exactly the rows ``generate``
        feeds the language model for it, and the kept indices. ``last_selection`` is filled as by ``select``.
        This is what a server that accepts image embeddings takes (see :mod:`zoprune.integrations.vllm`).

        A selector that prunes inside the language model has no such embeddings: it is refused with a ConfigError;
        so is ``positions: original`` (the server numbers the embeddings' positions itself).
        """
        if self.selector.stage == "in_llm":
            raise ConfigError(f"selector {self.selector.name!r} prunes inside the language model (after its first "
                              f"layers saw every token), so there are no pruned image embeddings to hand to a "
                              f"server; use a method that prunes before the language model")
        if self.config.positions == "original":
            raise ConfigError("positions: 'original' cannot travel with pruned embeddings: the server that takes them "
                              "numbers their positions itself (contiguously); use positions: contiguous with embed")
        self.last_selection = []
        images, selections, kept, merged = self._selected(self._resized(inputs))
        embeddings = self.adapter.pruned_embeddings(images, kept, merged) if images else []
        self.last_selection = selections
        return embeddings

    @torch.no_grad()
    def prepare(self, **inputs: Any) -> dict[str, Any]:
        """The model keyword arguments with only the kept visual tokens (what ``generate`` and ``__call__`` use).

        With a selector that prunes inside the language model ("in_llm") the inputs stay whole: the pruning happens
        while ``generate`` / ``__call__`` run the model.
        """
        self.last_selection = []
        pruned, selections = self._prepare(inputs)
        self.last_selection = selections
        return pruned

    def __call__(self, **inputs: Any) -> Any:
        """The model's forward pass on the pruned inputs (logits cover the pruned sequence)."""
        self.last_selection = []
        if self.selector.stage == "in_llm":
            chosen: list[Selection] = []
            with torch.no_grad(), self._inside_llm(inputs, chosen):
                output = self.model(**inputs)
            self.last_selection = chosen
            return output
        with torch.no_grad():
            pruned, selections = self._prepare(inputs)
        output = self.model(**pruned)
        self.last_selection = selections
        return output

    def forward(self, **inputs: Any) -> Any:
        """The same as calling the pruned model: the model's forward pass on the pruned inputs."""
        return self(**inputs)

    @torch.no_grad()
    def generate(self, **kwargs: Any) -> Any:
        """``model.generate`` on the pruned inputs. Takes exactly what the model's own ``generate`` takes.

        The returned sequences start with the caller's own ``input_ids`` (not the shorter pruned prompt), so
        ``output[:, inputs["input_ids"].shape[1]:]`` is the generated text, as with the unpruned model.
        """
        self.last_selection = []
        if self.selector.stage == "in_llm":
            chosen: list[Selection] = []
            with self._inside_llm(kwargs, chosen):
                output = self.model.generate(**kwargs)
            self.last_selection = chosen
            return output
        pruned, selections = self._prepare(kwargs)
        output = self.model.generate(**pruned)
        self.last_selection = selections
        original, short = kwargs.get("input_ids"), pruned.get("input_ids")
        if original is None or short is None or original.shape == short.shape:
            return output
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        if original.shape[0] != sequences.shape[0]:  # several sequences per prompt (beams, sampling)
            original = original.repeat_interleave(sequences.shape[0] // original.shape[0], dim=0)
        sequences = torch.cat([original.to(sequences.device), sequences[:, short.shape[1]:]], dim=1)
        if isinstance(output, torch.Tensor):
            return sequences
        output.sequences = sequences
        return output


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


def _requires(scorer: Scorer | None, selector: Selector) -> frozenset[str]:
    """The extra signals the scorer and the selector ask the adapter for."""
    return (scorer.requires if scorer is not None else frozenset()) | frozenset(selector.requires)


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


def prune(model: torch.nn.Module, config: PipelineConfig | dict | str | Path | None = None,
          **overrides: Any) -> PrunedModel:
    """Put a pruning pipeline in front of ``model``'s language model.

    ``config`` is a :class:`PipelineConfig`, a dict of its fields, or a path to a YAML/TOML/JSON file; ``overrides``
    replace top-level fields (``prune(model, budget=128)``). The default config is the paper's ZOO-Prune keeping
    64 tokens per image. ``model`` is not modified.
    """
    config = resolve_config(config, **overrides)
    adapter = make_adapter(model, config)
    scorer_entry = config.component("scorer")
    selector_cls, selector_config = config.component("selector")
    scorer = scorer_entry[0](scorer_entry[1]) if scorer_entry is not None else None
    if scorer is not None:
        _check_provided("scorer", scorer, adapter)
        scorer.check_scoring_dtype(config.torch_dtype(next(adapter.projector().parameters()).dtype))
    if selector_cls.stage == "in_llm" and scorer is not None:
        raise ConfigError(f"selector {selector_cls.name!r} ranks tokens inside the language model by its own "
                          f"signal; set `scorer: null` (it has {scorer.name!r})")
    selector = selector_cls(selector_config)
    _check_provided("selector", selector, adapter)
    if selector.merges and not adapter.places_merged:
        raise ConfigError(f"selector {selector.name!r} merges tokens, and adapter {adapter.name!r} cannot place "
                          f"merged tokens in the prompt; use a selector that only keeps tokens")
    if selector.resizes_images:
        _check_resizable(selector, adapter, config)
    _check_positions(config, adapter, selector)
    if selector.merges and selector.stage == "in_llm":
        raise ConfigError(f"selector {selector.name!r}: merging inside the language model is not supported")
    return PrunedModel(model, config, adapter, scorer, selector)


def _check_resizable(selector: Selector, adapter: ModelAdapter, config: PipelineConfig) -> None:
    if not adapter.resizes_images:
        raise ConfigError(
            f"selector {selector.name!r} shrinks each image so that the vision tower emits about k tokens, which "
            f"needs an encoder that takes any resolution (Qwen2-VL, Qwen2.5-VL); adapter {adapter.name!r} "
            f"{adapter.why_no_resize}. Use `pool` (average pooling of the patch grid to k tokens) instead")
    if config.budget.keep is None:
        raise ConfigError(f"selector {selector.name!r} needs a count budget (`budget: 64`): the image is shrunk "
                          f"to about that many tokens before the vision tower, and a ratio of the shrunk image's "
                          f"tokens would apply the budget twice")


def _check_positions(config: PipelineConfig, adapter: ModelAdapter, selector: Selector) -> None:
    """A ConfigError when ``positions`` asks for what this adapter and selector cannot do. In-LLM selectors keep the
    original positions whatever the setting (the model numbers the unpruned prompt), so they accept both."""
    if config.positions == "contiguous" or selector.stage == "in_llm":
        return
    if config.positions not in adapter.position_modes:
        raise ConfigError(f"positions: {config.positions!r} is not supported by adapter {adapter.name!r} (it "
                          f"honours {', '.join(sorted(adapter.position_modes))}); use positions: contiguous")
    if selector.merges:
        raise ConfigError(f"positions: {config.positions!r} with selector {selector.name!r}: its merged tokens have "
                          f"no position in the unpruned prompt; use positions: contiguous")


def _check_provided(kind: str, component: Scorer | Selector, adapter: ModelAdapter) -> None:
    missing = frozenset(component.requires) - adapter.provides
    if missing:
        raise ConfigError(f"{kind} {component.name!r} needs {', '.join(sorted(missing))}, which adapter "
                          f"{adapter.name!r} cannot provide")


def resolve_config(config: PipelineConfig | dict | str | Path | None = None, **overrides: Any) -> PipelineConfig:
    """A validated PipelineConfig from any of the forms ``prune`` accepts."""
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, PipelineConfig):
        data = config.to_dict()
    elif isinstance(config, dict):
        data = dict(config)
    elif isinstance(config, (str, Path)):
        from zoprune.config import read_config_file

        data = read_config_file(config)
        if not isinstance(data, dict):
            raise ConfigError(f"{config}: expected a mapping of config keys")
    else:
        raise ConfigError(f"config must be a PipelineConfig, a dict or a file path, not {type(config).__name__}")
    if not overrides and isinstance(config, PipelineConfig):
        return config
    source = str(config) if isinstance(config, (str, Path)) else None
    return PipelineConfig.from_dict({**data, **overrides}, source=source)


def make_adapter(model: Any, config: PipelineConfig) -> ModelAdapter:
    """The configured adapter, or the first registered one that supports the model."""
    if not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"expected a transformers model (a torch.nn.Module), got {type(model).__name__}")
    registry = get_registry()
    supported = ", ".join(f"{cls} ({reg.name})" for reg in registry.components["adapter"].values()
                          for cls in reg.cls.model_classes) or "none"
    if config.adapter is not None:
        cls, params = config.component("adapter")
        if not cls.supports(model):
            why = f"it handles: {', '.join(cls.model_classes) or 'see its docs'}" if cls.model_classes_only \
                else f"the model has {cls.missing(model)}"
            raise UnsupportedModelError(f"adapter {cls.name!r} does not support {type(model).__name__}; {why}")
        return cls(model, params)
    adapters = list(registry.components["adapter"].values())
    # an adapter naming the model's class comes first; then one that recognises the model by its shape
    for registered in sorted(adapters, key=lambda reg: type(model).__name__ not in reg.cls.model_classes):
        if registered.cls.supports(model):
            return registered.cls(model)
    reasons = "".join(f" Adapter {reg.name!r}: the model has {why}." for reg in adapters
                      if (why := reg.cls.missing(model)) is not None and not reg.cls.model_classes_only)
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a vision-language model any registered adapter supports. "
        f"Supported model classes: {supported}.{reasons} Name an adapter in the config, or register one as a "
        f"plugin."
    )
