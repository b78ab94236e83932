"""Loading a model, its processor and an image for the commands, with errors that say what went wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoprune.config import PipelineConfig
from zoprune.errors import InputError, ZopruneError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_model() -> str | None:
    """The checkpoint that ships with zoprune, when it is installed."""
    try:
        from zoprune.shapes.model import default_model_path
    except ImportError:
        return None
    path = default_model_path()
    return str(path) if (Path(path) / "config.json").is_file() else None


def load_model(name_or_path: str | None, dtype: str = "float32", device: str = "cpu",
               attn_implementation: str | None = None, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model, processor)`` from a local directory or a hub id, via transformers' Auto classes.

    Code shipped with a checkpoint (``auto_map`` in its config) never runs unless ``trust_remote_code`` is True;
    the commands have no option that sets it (docs/security.md)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name_or_path = name_or_path or default_model()
    if name_or_path is None:
        raise ZopruneError("no --model given and no shipped default model is installed")
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().exists():
        raise ZopruneError(f"model directory not found: {name_or_path}")
    if dtype not in DTYPES:
        raise ZopruneError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise ZopruneError(f"could not load model {name_or_path!r}: {error}") from None
    return model.to(device).eval(), processor


def load_image(path: str | Path):
    """The image at ``path`` as an RGB PIL image; an InputError says when it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        return Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{path} is not an image PIL can read: {error}") from None


def prompt_text(processor: Any, prompt: str, images: int = 1) -> str:
    """The prompt with image placeholders, through the processor's chat template when it has one."""
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"}] * images + [{"type": "text", "text": prompt}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    token = getattr(processor, "image_token", "<image>")
    return f"{token * images}\n{prompt}"


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


def resolve_method(text: str) -> tuple[str, PipelineConfig]:
    """A method given on the command line: a config file, a registered method name (``zoprune plugins`` lists
    them), a selector name, or ``SCORER+SELECTOR``. Returns a label and the config."""
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
