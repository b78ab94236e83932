"""Methods by name: what ``--method`` on the command line and ``method=`` in the lmms-eval plugin accept, resolved
into a :class:`~zoprune.PipelineConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoprune.config import PipelineConfig
from zoprune.errors import ZopruneError


def resolve_method(text: str) -> tuple[str, PipelineConfig]:
    """A method as ``--method`` and ``method=`` take it: a config file, a registered method name (``zoprune plugins``
    lists them), a selector name, or ``SCORER+SELECTOR``. Returns a label and the config; a ZopruneError lists the
    known methods when ``text`` is none of these."""
    from zoprune.registry import get_registry

    registry = get_registry()
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".toml", ".json"):
        return path.stem, PipelineConfig.load(path)
    if text in registry.methods:
        why = registry.method_available(text)
        if why:
            raise ZopruneError(f"method {text!r} is not available: {why}")
        return text, PipelineConfig.from_dict(registry.method(text).config, source=f"method {text!r}")
    scorer, _, selector = text.rpartition("+")
    if selector in registry.components["selector"] and (not scorer or scorer in registry.components["scorer"]):
        data: dict[str, Any] = {"selector": selector}
        if scorer:
            data["scorer"] = scorer
        elif not registry.get("selector", selector).cls.needs_scores:
            data["scorer"] = None
        return text, PipelineConfig.from_dict(data)
    known = ", ".join(sorted(registry.methods))
    raise ZopruneError(f"unknown method {text!r}: not a config file, a registered method ({known}), "
                       f"a selector or SCORER+SELECTOR")


def available_methods() -> list[str]:
    """Registered methods whose components are installed."""
    from zoprune.registry import get_registry

    registry = get_registry()
    return [name for name in registry.methods if registry.method_available(name) is None]
