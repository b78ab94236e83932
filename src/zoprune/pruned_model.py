"""The :class:`PrunedModel` wrapper ``prune`` returns: the model's own ``generate`` and ``__call__`` (and ``select``,
``prepare``, ``embed``) run with the language model fed the kept visual tokens only."""

from __future__ import annotations

import threading
from typing import Any

import torch

from zoprune.checks import check_inputs
from zoprune.config import PipelineConfig
from zoprune.entries import Selection, select_entry
from zoprune.errors import ConfigError
from zoprune.interfaces import ImageTokens, ModelAdapter, PrunedEmbedding, Scorer, Selector
from zoprune.memo import _Memo, _MemoEntry, _ProjectorCopies
from zoprune.resolution import _check_resizable, resolve_config


class _PerThread(threading.local):
    """State of the calls made from one thread (``threading.local``: every thread sees its own)."""

    def __init__(self) -> None:
        self.selection: list[Selection] = []


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


def _requires(scorer: Scorer | None, selector: Selector) -> frozenset[str]:
    """The extra signals the scorer and the selector ask the adapter for."""
    return (scorer.requires if scorer is not None else frozenset()) | frozenset(selector.requires)
