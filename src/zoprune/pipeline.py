"""``prune(model, config)``: the one verb. It returns a :class:`PrunedModel` whose ``generate`` and ``__call__``
take what the model's own take and run the language model on the kept visual tokens only.

The pieces: :mod:`zoprune.resolution` (config and adapter), :mod:`zoprune.pruned_model` (the wrapper),
:mod:`zoprune.entries` (one image's selection), :mod:`zoprune.checks` (inputs and plugin outputs),
:mod:`zoprune.memo` (what budget twins share). The names below stay importable from here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoprune.checks import check_finite, check_inputs, entry_name
from zoprune.config import PipelineConfig
from zoprune.entries import Selection, select_entry
from zoprune.errors import ConfigError
from zoprune.pruned_model import PrunedModel
from zoprune.resolution import (_check_positions, _check_provided, _check_resizable, make_adapter,
                                resolve_config)

__all__ = ["PrunedModel", "Selection", "check_finite", "check_inputs", "entry_name", "make_adapter", "prune",
           "resolve_config", "select_entry"]


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
