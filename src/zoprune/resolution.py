"""From what the caller gives ``prune`` to the pipeline's parts: a validated config from any accepted form, the
adapter for the model, and the checks of a config against what the adapter and the components can do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoprune.config import PipelineConfig
from zoprune.errors import ConfigError, UnsupportedModelError
from zoprune.interfaces import ModelAdapter, Scorer, Selector
from zoprune.registry import get_registry


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
