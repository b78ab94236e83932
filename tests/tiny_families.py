"""Tiny randomly initialised LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL models and hand-built inputs for them.

The inputs are laid out the way the models' processors lay them out (one run of placeholders per image or video, in
batch order, left padded), but built directly from token ids so no processor or download is needed. Placeholder
counts come from the model's own code (``get_image_features`` for LLaVA-NeXT, ``grid_thw`` for Qwen), never from
the adapters under test.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                          Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

PAD_ID = 0
BOS_ID = 1
IMAGE_TOKEN_ID = 3  # LLaVA-NeXT's <image>; Qwen's <|image_pad|>
VIDEO_TOKEN_ID = 4  # Qwen's <|video_pad|>
VISION_START_ID = 5  # Qwen's <|vision_start|>
VISION_END_ID = 6  # Qwen's <|vision_end|>
TEXT_IDS = range(7, 60)  # ordinary text tokens


def _finish(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    model = model.eval().to(dtype)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None  # random weights: never stop early, so lengths are predictable
    return model


# ---------------------------------------------------------------------------------------------------------- LLaVA-NeXT

def tiny_llava_next(seed: int = 0, dtype: torch.dtype = torch.float32,
                    attn_implementation: str = "eager") -> LlavaNextForConditionalGeneration:
    """A 3-layer CLIP (16 px views of 4 px patches: 16 tokens per view) + 2-layer Llama LLaVA-NeXT.

    Grid pinpoints 16x32, 32x16 and 32x32 px: an image is a base view plus 2 or 4 crops of 16 x 16 px.
    """
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=16, patch_size=4, projection_dim=32)
    text = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=2)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]], projector_hidden_act="gelu")
    config._attn_implementation = attn_implementation
    return _finish(LlavaNextForConditionalGeneration(config), dtype)


def llava_next_batch(model: LlavaNextForConditionalGeneration, prompts: list[list[int]],
                     image_sizes: list[list[tuple[int, int]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded inputs: prompt b is ``[BOS] + (placeholders of each of its images) + prompts[b]``.

    ``image_sizes[b]`` lists the original (height, width) of each image of prompt b. ``pixel_values`` is
    (num_images, max_views, 3, 16, 16), zero-padded like the processor's output; each image's placeholder count is
    the length of its packed features as the model computes them.
    """
    g = torch.Generator().manual_seed(seed)
    config = model.config
    side = config.vision_config.image_size
    sizes = [size for per_prompt in image_sizes for size in per_prompt]
    out: dict[str, torch.Tensor] = {}
    lengths: list[int] = []
    if sizes:
        views = [image_size_to_num_patches(size, config.image_grid_pinpoints, side) for size in sizes]
        pixel_values = torch.zeros(len(sizes), max(views), 3, side, side)
        for i, count in enumerate(views):
            pixel_values[i, :count] = torch.randn(count, 3, side, side, generator=g)
        out["pixel_values"] = pixel_values.to(model.dtype)
        out["image_sizes"] = torch.tensor(sizes)
        with torch.no_grad():
            packed = model.model.get_image_features(pixel_values=out["pixel_values"], image_sizes=out["image_sizes"])
        lengths = [features.shape[0] for features in packed.pooler_output]
    rows, index = [], 0
    for text, per_prompt in zip(prompts, image_sizes):
        count = sum(lengths[index:index + len(per_prompt)])
        index += len(per_prompt)
        rows.append([BOS_ID] + [IMAGE_TOKEN_ID] * count + list(text))
    return {**_left_pad(rows), **out}


# ------------------------------------------------------------------------------------------------------- Qwen2(.5)-VL

def _qwen_text(vocab_size: int = 64) -> dict:
    # head_dim 12: the rotary half (6) is split 2/2/2 between the temporal, height and width sections
    return dict(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]},
                pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=2)


def _qwen_ids() -> dict:
    return dict(image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID, vision_start_token_id=VISION_START_ID,
                vision_end_token_id=VISION_END_ID)


def tiny_qwen2_vl(seed: int = 0, dtype: torch.dtype = torch.float32,
                  attn_implementation: str = "eager") -> Qwen2VLForConditionalGeneration:
    """A 2-block Qwen2-VL vision tower (2 px patches, 2x2 merge, d_v = 32) + a 2-layer Qwen2 language model."""
    torch.manual_seed(seed)
    vision = dict(depth=2, embed_dim=32, hidden_size=48, mlp_ratio=2, num_heads=4, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(vision_config=vision, text_config=_qwen_text(), **_qwen_ids())
    config._attn_implementation = attn_implementation
    return _finish(Qwen2VLForConditionalGeneration(config), dtype)


def tiny_qwen2_5_vl(seed: int = 0, dtype: torch.dtype = torch.float32,
                    attn_implementation: str = "eager") -> Qwen2_5_VLForConditionalGeneration:
    """A 2-block Qwen2.5-VL vision tower (windows of 2x2 merged tokens in block 0, full attention in block 1)
    + a 2-layer language model. Windowed attention makes the tower's ``last_hidden_state`` window-permuted."""
    torch.manual_seed(seed)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=48, num_heads=4, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=8, fullatt_block_indexes=[1],
                  tokens_per_second=2)
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=_qwen_text(), **_qwen_ids())
    config._attn_implementation = attn_implementation
    return _finish(Qwen2_5_VLForConditionalGeneration(config), dtype)


def qwen_batch(model: torch.nn.Module, prompts: list[list[int]], visuals: list[list[tuple[str, tuple[int, int, int]]]],
               seed: int = 0, token_types: bool = True) -> dict[str, torch.Tensor]:
    """Left-padded Qwen inputs: prompt b is ``[BOS] + for each visual: <start> placeholders <end> + prompts[b]``.

    ``visuals[b]`` lists prompt b's images and videos in order, each as ``("image" | "video", (t, h, w))`` with t,
    h, w in patches (h, w even; t = 1 for images). A visual has t*h*w/4 placeholders (merged tokens).
    ``pixel_values`` is (sum of t*h*w over images, 3 * 2 * 2 * 2), likewise ``pixel_values_videos``.
    """
    g = torch.Generator().manual_seed(seed)
    vision = model.config.vision_config
    merge = vision.spatial_merge_size ** 2
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    rows, types = [], []
    grids: dict[str, list] = {"image": [], "video": []}
    for text, items in zip(prompts, visuals):
        row, kind_row = [BOS_ID], [0]
        for kind, thw in items:
            n = thw[0] * thw[1] * thw[2] // merge
            token, code = (IMAGE_TOKEN_ID, 1) if kind == "image" else (VIDEO_TOKEN_ID, 2)
            row += [VISION_START_ID] + [token] * n + [VISION_END_ID]
            kind_row += [0] + [code] * n + [0]
            grids[kind].append(list(thw))
        rows.append(row + list(text))
        types.append(kind_row + [0] * len(text))
    out = _left_pad(rows)
    if token_types:
        width = out["input_ids"].shape[1]
        out["mm_token_type_ids"] = torch.tensor([[0] * (width - len(t)) + t for t in types])
    for kind, pixels, grid in (("image", "pixel_values", "image_grid_thw"),
                               ("video", "pixel_values_videos", "video_grid_thw")):
        if grids[kind]:
            thw = torch.tensor(grids[kind])
            out[pixels] = torch.randn(int(thw.prod(-1).sum()), patch_dim, generator=g).to(model.dtype)
            out[grid] = thw
    return out


def _left_pad(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    return {"input_ids": torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows]),
            "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])}


# ----------------------------------------------------------------------------------------------------- checking
@contextlib.contextmanager
def language_model_calls(model: torch.nn.Module):
    """Record the keyword arguments of every call to ``model.model.language_model`` (prefill, then each decode step).

    Yields a list that fills with dicts of cloned ``inputs_embeds``, ``position_ids`` and ``attention_mask``.
    """
    calls: list[dict] = []

    def hook(module, args, kwargs):
        calls.append({key: kwargs[key].clone() if isinstance(kwargs.get(key), torch.Tensor) else kwargs.get(key)
                      for key in ("inputs_embeds", "position_ids", "attention_mask")})

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()
