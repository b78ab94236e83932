"""Loading a model, its processor and an image, and building a prompt: what the CLI, the evaluation and the
integrations (lmms-eval, vLLM) share, with errors that say what went wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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


def available_devices() -> list[str]:
    """The devices this torch can use here: always ``cpu``, then each CUDA device and ``mps`` when present."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(name: str) -> torch.device:
    """``name`` as a torch device, or one line naming it and the devices that exist (instead of torch's traceback
    ending in "Torch not compiled with CUDA enabled" or "invalid device ordinal")."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ZopruneError(f"--device {name!r} is not a device name (cpu, cuda, cuda:N, mps); "
                           f"available here: {', '.join(available_devices())}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"torch {torch.__version__} was built without CUDA" if torch.version.cuda is None else \
            "torch sees no CUDA device"
        raise ZopruneError(f"--device {name}: {build}; available here: {', '.join(available_devices())}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ZopruneError(f"--device {name}: there is no CUDA device {device.index}; available here: "
                           f"{', '.join(available_devices())}")
    try:
        torch.empty(0, device=device)
    except Exception as error:  # any other device type torch cannot use here (mps on Linux, say)
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        raise ZopruneError(f"--device {name}: not usable here ({reason}); available here: "
                           f"{', '.join(available_devices())}") from None
    return device


def load_model(name_or_path: str | None, dtype: str = "float32", device: str = "cpu",
               attn_implementation: str | None = None, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model, processor)`` from a local directory or a hub id, via transformers' Auto classes.

    Code shipped with a checkpoint (``auto_map`` in its config) never runs unless ``trust_remote_code`` is True;
    the commands have no option that sets it (docs/security.md)."""
    name_or_path = name_or_path or default_model()
    if name_or_path is None:
        raise ZopruneError("no --model given and no shipped default model is installed")
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().exists():
        raise ZopruneError(f"model directory not found: {name_or_path}")
    if dtype not in DTYPES:
        raise ZopruneError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    check_device(device)
    model, processor = from_pretrained(name_or_path, f"model {name_or_path!r}", dtype=DTYPES[dtype],
                                       attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    return model.to(device), processor


def from_pretrained(name_or_path: str, label: str, attn_implementation: str | None = None,
                    trust_remote_code: bool = False, **model_kwargs: Any) -> tuple[Any, Any]:
    """``(model in eval mode, processor)`` through transformers' Auto classes; a ZopruneError says which ``label``
    could not be loaded. ``model_kwargs`` (dtype, device_map) go to the model's ``from_pretrained``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    try:
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                            **model_kwargs)
    except (OSError, ValueError) as error:
        raise ZopruneError(f"could not load {label}: {error}") from None
    return model.eval(), processor


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
