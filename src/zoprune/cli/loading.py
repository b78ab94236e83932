"""The pipeline a command runs (``--config``/``--method`` with ``--keep``/``--ratio``) and what resolving it decided."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoprune.config import PipelineConfig
from zoprune.errors import ZopruneError
from zoprune.methods import resolve_method

def pipeline_config(config: str | PipelineConfig | None, keep: int | None = None, ratio: float | None = None,
                    **overrides: Any) -> PipelineConfig:
    """The config (a file, a config, or the defaults) with the command-line overrides applied."""
    from zoprune.pipeline import resolve_config

    if keep is not None and ratio is not None:
        raise ZopruneError("give --keep or --ratio, not both")
    if keep is not None:
        overrides["budget"] = {"keep": keep}
    elif ratio is not None:
        overrides["budget"] = {"ratio": ratio}
    return resolve_config(config, **overrides)


def chosen_config(config: Path | None, method: str | None, keep: int | None = None, ratio: float | None = None,
                  **overrides: Any) -> PipelineConfig:
    """The pipeline a command runs: ``--config`` or ``--method`` (not both; neither: the defaults), with ``--keep``
    or ``--ratio`` and any other overrides applied (:func:`pipeline_config`)."""
    if config is not None and method is not None:
        raise ZopruneError("give --config or --method, not both")
    source = resolve_method(method)[1] if method is not None else str(config) if config else None
    return pipeline_config(source, keep=keep, ratio=ratio, **overrides)


def method_notes(text: str, config: PipelineConfig, budget_given: bool) -> list[str]:
    """What resolving ``text`` decided that the text itself does not say, for the command to print: a default
    scorer added to a bare selector name, a config file's budget replaced by the command's."""
    from zoprune.registry import get_registry

    notes = []
    is_file = Path(text).suffix.lower() in (".yaml", ".yml", ".toml", ".json")
    if is_file and budget_given and "budget" in config.model_fields_set:
        budget = config.budget.model_dump(exclude_none=True)
        notes.append(f"{text}: the file's budget {budget} is replaced by the command's budgets")
    if not is_file and text not in get_registry().methods and "+" not in text and config.scorer is not None:
        notes.append(f"{text}: the selector needs scores and none was named, so the default scorer "
                     f"{config.scorer.name!r} is used (SCORER+{text} names another)")
    return notes
