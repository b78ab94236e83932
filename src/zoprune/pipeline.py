"""``prune(model, config)``: the one verb. It returns a :class:`PrunedModel` whose ``generate`` and ``__call__``
take what the model's own take and run the language model on the kept visual tokens only."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoprune.config import PipelineConfig
from zoprune.errors import ConfigError, PluginError, UnsupportedModelError
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


@dataclass
class _Memo:
    """The last inputs' visual tokens and scores. Scores depend on the image and the seed, not on the budget, so a
    PrunedModel and its :meth:`PrunedModel.at_budget` twins share one memo and a budget sweep scores once."""

    key: tuple = ()
    inputs: list = field(default_factory=list)  # holds the keyed tensors, so their ids cannot be reused meanwhile
    images: list[ImageTokens] = field(default_factory=list)
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # image index -> (N,) scores

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


class PrunedModel:
    """A model with a pruning pipeline in front of its language model. The wrapped model is not modified."""

    def __init__(self, model: torch.nn.Module, config: PipelineConfig, adapter: ModelAdapter,
                 scorer: Scorer | None, selector: Selector):
        self.model = model
        self.config = config
        self.adapter = adapter
        self.scorer = scorer
        self.selector = selector
        #: one entry per image of the last ``generate`` / ``__call__`` / ``select`` call, in batch order
        self.last_selection: list[Selection] = []
        self._projectors: dict[tuple[torch.dtype, torch.device], torch.nn.Module] = {}
        self._memo = _Memo()

    def __repr__(self) -> str:
        scorer = self.scorer.name if self.scorer is not None else None
        return (f"PrunedModel({type(self.model).__name__}, adapter={self.adapter.name!r}, scorer={scorer!r}, "
                f"selector={self.selector.name!r}, budget={self.config.budget!r})")

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
        projector = self.adapter.projector()
        weight = next(projector.parameters())
        if weight.dtype == dtype:
            return projector
        key = (dtype, weight.device)  # the model may have moved since the copy was made
        if key not in self._projectors:
            self._projectors[key] = copy.deepcopy(projector).to(dtype).eval()
        return self._projectors[key]

    @torch.no_grad()
    def select(self, **inputs: Any) -> list[Selection]:
        """Score and select the visual tokens of every image in ``inputs`` without running the language model.

        ``inputs`` are the processor's outputs (``input_ids`` (B, L), ``pixel_values``, ...). Returns one
        :class:`Selection` per image, in batch order, and keeps it in ``last_selection``. A selector that prunes
        inside the language model needs its first layers, so for one the model's forward pass runs.
        """
        if self.selector.stage == "in_llm":  # the selection needs the language model's first layers
            self(**inputs)
            return self.last_selection
        images = self._extract(inputs)
        self.last_selection = self._select(images)
        return self.last_selection

    def _inside_llm(self, inputs: dict[str, Any]) -> Any:
        """The adapter's context that selects inside the language model (for an "in_llm" selector); it fills
        ``last_selection`` when the language model's prefill reaches the selector's layer."""
        self.last_selection = []

        def select(images: list[ImageTokens]) -> list[torch.Tensor]:
            self.last_selection = self._select(images, memo=False)
            return [s.kept for s in self.last_selection]

        dtype = self.config.torch_dtype(next(self.model.parameters()).dtype)
        return self.adapter.inside_llm(inputs, self.selector.llm_layer, select, dtype)

    def _extract(self, inputs: dict[str, Any]) -> list[ImageTokens]:
        requires = _requires(self.scorer, self.selector)
        key = (_Memo.key_of(inputs), requires)
        if key[0] and key == self._memo.key:
            return self._memo.images
        dtype = self.config.torch_dtype(next(self.adapter.projector().parameters()).dtype)
        images = self.adapter.extract(inputs, self._projector(dtype), dtype, requires)
        self._memo.key, self._memo.inputs, self._memo.images = key, list(inputs.values()), images
        self._memo.scores = {}
        return images

    def _select(self, images: list[ImageTokens], memo: bool = True) -> list[Selection]:
        """Score and select every entry; with ``memo``, ``images`` came from ``_extract`` and scores are reused."""
        selections = []
        budgets = self.adapter.token_budgets(self.config.budget, images)
        cached = self._memo.scores if memo and images is self._memo.images else {}
        for index, (tokens, k) in enumerate(zip(images, budgets)):
            selection, scores = select_entry(self.scorer, self.selector, tokens, k, self.config.seed,
                                             cached.get(index), self.adapter.name)
            if memo and scores is not None and self.scorer is not None:
                cached[index] = scores
            selections.append(selection)
        return selections

    @torch.no_grad()
    def prepare(self, **inputs: Any) -> dict[str, Any]:
        """The model keyword arguments with only the kept visual tokens (what ``generate`` and ``__call__`` use).

        With a selector that prunes inside the language model ("in_llm") the inputs stay whole: the pruning happens
        while ``generate`` / ``__call__`` run the model.
        """
        if self.selector.stage == "in_llm":
            return dict(inputs)
        images, kept, merged = self._kept(inputs)
        if not images:  # text-only inputs: nothing to prune
            return dict(inputs)
        if merged is None:
            return self.adapter.pruned_inputs(inputs, images, kept)
        return self.adapter.pruned_inputs(inputs, images, kept, merged=merged)

    @torch.no_grad()
    def embed(self, **inputs: Any) -> list[PrunedEmbedding]:
        """The pruned visual embeddings of every image in ``inputs``, without running the language model.

        ``inputs`` are the processor's outputs, as for ``generate`` (the prompt is part of them, so a method that
        looks at the question sees it). Returns one :class:`~zoprune.PrunedEmbedding` per image (or video), in the
        order the model consumes them: its (k, d_l) embeddings in the model's dtype, exactly the rows ``generate``
        feeds the language model for it, and the kept indices. ``last_selection`` is filled as by ``select``.
        This is what a server that accepts image embeddings takes (see :mod:`zoprune.integrations.vllm`).

        A selector that prunes inside the language model has no such embeddings: it is refused with a ConfigError.
        """
        if self.selector.stage == "in_llm":
            raise ConfigError(f"selector {self.selector.name!r} prunes inside the language model (after its first "
                              f"layers saw every token), so there are no pruned image embeddings to hand to a "
                              f"server; use a method that prunes before the language model")
        images, kept, merged = self._kept(inputs)
        if not images:
            return []
        return self.adapter.pruned_embeddings(images, kept, merged)

    def _kept(self, inputs: dict[str, Any]
              ) -> tuple[list[ImageTokens], list[torch.Tensor], list[torch.Tensor | None] | None]:
        """Every entry's tokens, its kept indices (on the embeddings' device) and its merged tokens (None when no
        entry has any); fills ``last_selection``."""
        images = self._extract(inputs)
        self.last_selection = self._select(images) if images else []
        kept = [s.kept.to(images[i].model_embeddings.device) for i, s in enumerate(self.last_selection)]
        if all(s.merged is None for s in self.last_selection):
            return images, kept, None
        return images, kept, [s.merged for s in self.last_selection]

    def __call__(self, **inputs: Any) -> Any:
        """The model's forward pass on the pruned inputs (logits cover the pruned sequence)."""
        if self.selector.stage == "in_llm":
            with torch.no_grad(), self._inside_llm(inputs):
                return self.model(**inputs)
        return self.model(**self.prepare(**inputs))

    def forward(self, **inputs: Any) -> Any:
        """The same as calling the pruned model: the model's forward pass on the pruned inputs."""
        return self(**inputs)

    @torch.no_grad()
    def generate(self, **kwargs: Any) -> Any:
        """``model.generate`` on the pruned inputs. Takes exactly what the model's own ``generate`` takes.

        The returned sequences start with the caller's own ``input_ids`` (not the shorter pruned prompt), so
        ``output[:, inputs["input_ids"].shape[1]:]`` is the generated text, as with the unpruned model.
        """
        if self.selector.stage == "in_llm":
            with self._inside_llm(kwargs):
                return self.model.generate(**kwargs)
        pruned = self.prepare(**kwargs)
        output = self.model.generate(**pruned)
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
                 scores: torch.Tensor | None = None, adapter: str = "adapter"
                 ) -> tuple[Selection, torch.Tensor | None]:
    """Score (unless ``scores`` are given) and select k of one entry's tokens, checked, with a generator seeded
    afresh from ``seed``: what a pipeline does per image, usable on tokens that did not come from an adapter (a
    serving engine's tensors, see :mod:`zoprune.integrations.vllm`). Returns the selection and the scores."""
    # a generator per image, seeded alike: an image's selection does not depend on its batch neighbours
    ctx = Context(generator=torch.Generator(tokens.features.device).manual_seed(seed), dtype=tokens.features.dtype)
    n = tokens.num_tokens
    if not 1 <= k <= n:
        raise PluginError(f"adapter {adapter!r} gave a budget of {k} tokens to an entry of {n}")
    if k == n:  # nothing to prune: no scoring work either
        return Selection(tokens.sample, tokens.image, n, torch.arange(n), None, tokens.grid), None
    if scores is None and scorer is not None:
        scores = scorer.score(tokens, ctx)
    if scores is not None and tuple(scores.shape) != (n,):
        raise PluginError(f"scorer {scorer.name!r} returned scores of shape {tuple(scores.shape)}, expected ({n},)")
    chosen = selector.select(scores, tokens, k, ctx)
    merged = groups = None
    if isinstance(chosen, Merge):
        merged, groups = _check_merge(chosen, tokens, k, selector.name)
        chosen = chosen.kept
    _check_kept(chosen, n, k - (merged.shape[0] if merged is not None else 0), selector.name)
    return Selection(tokens.sample, tokens.image, n, chosen.to(torch.long), scores, tokens.grid, merged,
                     groups), scores


def _requires(scorer: Scorer | None, selector: Selector) -> frozenset[str]:
    """The extra signals the scorer and the selector ask the adapter for."""
    return (scorer.requires if scorer is not None else frozenset()) | frozenset(selector.requires)


def _check_merge(merge: Merge, tokens: ImageTokens, k: int,
                 selector: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A merging selector's merged tokens (M, d_l) in the model's dtype (None when M = 0) and its groups (N,),
    checked."""
    n, width = tokens.num_tokens, tokens.model_embeddings.shape[-1]
    embeddings, groups = merge.embeddings, merge.groups
    problem = None
    if embeddings.ndim != 2 or embeddings.shape[1] != width or embeddings.shape[0] > k:
        problem = f"merged tokens of shape {tuple(embeddings.shape)}, expected (M <= {k}, {width})"
    elif tuple(groups.shape) != (n,) or groups.dtype.is_floating_point:
        problem = f"groups of shape {tuple(groups.shape)} and dtype {groups.dtype}, expected ({n},) integers"
    if problem:
        raise PluginError(f"selector {selector!r} returned {problem}")
    merged = embeddings.to(tokens.model_embeddings.dtype) if embeddings.shape[0] else None
    return merged, groups.to(torch.long)


def _check_kept(kept: torch.Tensor, n: int, k: int, selector: str) -> None:
    # a plugin's bug should surface here with its name, not as a shape error deep inside the language model
    problem = None
    if kept.ndim != 1 or kept.numel() != k:
        problem = f"{tuple(kept.shape)} indices, expected {k}"
    elif kept.dtype.is_floating_point:
        problem = f"indices of dtype {kept.dtype}"
    elif k and (int(kept.min()) < 0 or int(kept.max()) >= n):
        problem = f"indices outside [0, {n})"
    elif k > 1 and not bool((kept[1:] > kept[:-1]).all()):
        problem = "indices that are not distinct and sorted ascending"
    if problem:
        raise PluginError(f"selector {selector!r} returned {problem}")


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
    if selector_cls.stage == "in_llm" and scorer is not None:
        raise ConfigError(f"selector {selector_cls.name!r} ranks tokens inside the language model by its own "
                          f"signal; set `scorer: null` (it has {scorer.name!r})")
    selector = selector_cls(selector_config)
    _check_provided("selector", selector, adapter)
    if selector.merges and not adapter.places_merged:
        raise ConfigError(f"selector {selector.name!r} merges tokens, and adapter {adapter.name!r} cannot place "
                          f"merged tokens in the prompt; use a selector that only keeps tokens")
    if selector.merges and selector.stage == "in_llm":
        raise ConfigError(f"selector {selector.name!r}: merging inside the language model is not supported")
    return PrunedModel(model, config, adapter, scorer, selector)


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
            raise UnsupportedModelError(f"adapter {cls.name!r} does not support {type(model).__name__}; "
                                        f"it handles: {', '.join(cls.model_classes) or 'see its docs'}")
        return cls(model, params)
    for registered in registry.components["adapter"].values():
        if registered.cls.supports(model):
            return registered.cls(model)
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a vision-language model any registered adapter supports. "
        f"Supported model classes: {supported}. Name an adapter in the config, or register one as a plugin."
    )
