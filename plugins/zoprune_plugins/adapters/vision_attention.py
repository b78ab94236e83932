"""The attention a ViT's [CLS] token pays the patches in one encoder layer, and that layer's keys, computed from the
layer's own weights.

SDPA and flash kernels return no attention weights, and asking the model for them means reloading it with eager
attention. The [CLS] row needs far less: the hidden state entering the layer (which ``output_hidden_states``
gives anyway), the layer's pre-attention norm and its query/key projections. That row is exactly the one eager
attention computes (vision encoders use no attention mask), at the cost of one (T, d) key projection per layer.
"""

from __future__ import annotations

import torch

from zoprune.errors import InputError


def encoder_layers(vision_tower: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer layers of a CLIP-style vision tower (``encoder.layers``, possibly under ``vision_model``)."""
    for root in (vision_tower, getattr(vision_tower, "vision_model", None)):
        layers = getattr(getattr(root, "encoder", None), "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise InputError(f"cannot find the encoder layers of {type(vision_tower).__name__}; [CLS] attention needs a "
                     "CLIP-style vision tower (encoder.layers)")


def cls_attention(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Softmax attention of token 0 ([CLS]) to all T tokens, averaged over heads: (B, T, d) -> (B, T).

    ``layer`` is a pre-norm encoder layer with ``layer_norm1`` and ``self_attn.{q_proj, k_proj}`` (CLIP's
    layout); ``hidden`` is the hidden state entering it.
    """
    attn = getattr(layer, "self_attn", None)
    norm = getattr(layer, "layer_norm1", None)
    if attn is None or norm is None or not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "head_dim")):
        raise InputError(f"{type(layer).__name__} is not a CLIP-style encoder layer (layer_norm1, self_attn with "
                         "q_proj/k_proj); [CLS] attention cannot be computed for this vision tower")
    x = norm(hidden)  # (B, T, d)
    batch, length = x.shape[:2]
    query = attn.q_proj(x[:, :1]).view(batch, 1, -1, attn.head_dim).transpose(1, 2)  # (B, H, 1, hd)
    keys = attn.k_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # (B, H, T, hd)
    # softmax in float32 as eager attention does, whatever the model's dtype
    logits = (query @ keys.transpose(-1, -2)).float() * attn.scale  # (B, H, 1, T)
    return logits.softmax(dim=-1)[:, :, 0].mean(dim=1)  # (B, T)


def mean_keys(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The layer's attention keys of all T tokens, averaged over heads: (B, T, d) -> (B, T, head_dim).

    VisionZip's similarity metric for merging: the keys (before any scaling or rotary embedding; CLIP has none)
    of the layer whose output is the feature layer, the same layer :func:`cls_attention` reads.
    """
    attn = getattr(layer, "self_attn", None)
    norm = getattr(layer, "layer_norm1", None)
    if attn is None or norm is None or not all(hasattr(attn, a) for a in ("k_proj", "head_dim")):
        raise InputError(f"{type(layer).__name__} is not a CLIP-style encoder layer (layer_norm1, self_attn with "
                         "k_proj); its keys cannot be computed for this vision tower")
    batch, length = hidden.shape[:2]
    return attn.k_proj(norm(hidden)).view(batch, length, -1, attn.head_dim).mean(dim=2)  # (B, T, hd)
