"""Pruned embeddings on disk: what ``zoprune embed`` writes and a client (e.g. for vLLM) reads back.

A safetensors file with, per image i (in the model's order), ``image.{i}.embeddings`` (k, d_l) in the model's dtype
and ``image.{i}.kept`` (k - M,) int64; its metadata (text) holds ``prompt`` (one image placeholder per image, the
text the pipeline pruned for), ``config`` (the pipeline config, JSON), ``model`` and ``entries`` (JSON: per image
its sample, image, kind, num_tokens and num_merged).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from zoprune.errors import InputError
from zoprune.interfaces import PrunedEmbedding


def save_embeddings(path: str | Path, embeds: list[PrunedEmbedding], **metadata: Any) -> Path:
    """Write ``embeds`` and ``metadata`` (values made text: strings as they are, anything else as JSON)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for i, e in enumerate(embeds):
        tensors[f"image.{i}.embeddings"] = e.embeddings.detach().cpu().contiguous()
        tensors[f"image.{i}.kept"] = e.kept.detach().cpu().to(torch.int64).contiguous()
    text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    text["entries"] = json.dumps([{"sample": e.sample, "image": e.image, "kind": e.kind, "num_tokens": e.num_tokens,
                                   "num_merged": e.num_merged} for e in embeds])
    path = Path(path)
    save_file(tensors, str(path), metadata=text)
    return path


def load_embeddings(path: str | Path) -> tuple[list[PrunedEmbedding], dict[str, str]]:
    """The embeddings :func:`save_embeddings` wrote, and its metadata."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"embeddings file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            entries = json.loads(metadata["entries"])
            embeds = [PrunedEmbedding(entry["sample"], entry["image"], entry["kind"],
                                      handle.get_tensor(f"image.{i}.embeddings"), handle.get_tensor(f"image.{i}.kept"),
                                      entry["num_tokens"], entry["num_merged"]) for i, entry in enumerate(entries)]
    except (KeyError, ValueError, OSError) as error:
        raise InputError(f"{path} is not an embeddings file written by zoprune embed: {error}") from None
    return embeds, metadata
