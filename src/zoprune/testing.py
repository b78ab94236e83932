"""Test helpers for plugin authors: a tiny LLaVA built in memory, and batches for it.

A scorer, selector or adapter is best tested through the public API on a model small enough to build in
milliseconds: :func:`tiny_llava` is a randomly initialised ``LlavaForConditionalGeneration`` (3-layer CLIP,
3-layer Llama) with 16 visual tokens per image in a 4 x 4 grid, built from transformers configs with nothing to
download; :func:`llava_batch` makes left-padded inputs for it with any number of images per prompt.

```python
import zoprune
from zoprune.testing import llava_batch, tiny_llava

model = tiny_llava()
inputs = llava_batch(model, prompts=[[6, 7, 8]], images_per_prompt=[1])
(selection,) = zoprune.prune(model, {"selector": "topk", "budget": 4}).select(**inputs)
assert selection.kept.tolist() == sorted(selection.kept.tolist())
```

For answers that mean something, use the trained model that ships with zoprune instead:
``zoprune.shapes.model.load()`` returns it and its processor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers is imported when a model is built, not when this module is
    from transformers import LlavaForConditionalGeneration

IMAGE_TOKEN_ID = 3  # the id of the image placeholder token in the prompts llava_batch builds
PAD_ID = 0

__all__ = ["IMAGE_TOKEN_ID", "PAD_ID", "llava_batch", "tiny_llava", "tokens_per_image"]


def tiny_llava(seed: int = 0, image_size: int = 32, patch_size: int = 8, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "eager", vocab_size: int = 64,
               text_layers: int = 3) -> LlavaForConditionalGeneration:
    """A randomly initialised ``LlavaForConditionalGeneration``: 3-layer CLIP + ``text_layers``-layer Llama, with
    (image_size / patch_size)^2 visual tokens per image (16 by default).

    Three text layers by default, so FastV's default K = 2 leaves a layer that sees only the kept tokens. The
    generation config never stops early (random weights), so output lengths are predictable.

    Args:
        seed: seeds the random weights.
        image_size: side of the (square) input image in pixels.
        patch_size: side of a patch; one visual token per patch.
        dtype: the model's dtype.
        attn_implementation: ``"eager"`` or ``"sdpa"``.
        vocab_size: token ids of the prompts must be below it.
        text_layers: decoder layers of the language model.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=image_size, patch_size=patch_size, projection_dim=32)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=text_layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    config._attn_implementation = attn_implementation
    model = LlavaForConditionalGeneration(config).eval().to(dtype)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None  # random weights: never stop early, so lengths are predictable
    return model


def tokens_per_image(model: LlavaForConditionalGeneration) -> int:
    """Visual tokens per image of a :func:`tiny_llava` model: (image_size / patch_size)^2."""
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def llava_batch(model: LlavaForConditionalGeneration, prompts: list[list[int]], images_per_prompt: list[int],
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded inputs for a :func:`tiny_llava` model, as its processor would make them.

    Each prompt is ``[1] + [IMAGE_TOKEN_ID] * (tokens per image * images) + text``; the images are seeded noise.

    Args:
        model: the model the inputs are for (its image size and visual tokens per image).
        prompts: the text token ids of each prompt (each below the model's vocabulary size, not 0 to 3).
        images_per_prompt: how many images each prompt holds (0 for a text-only prompt).
        seed: seeds the pixel values.

    Returns:
        ``input_ids`` and ``attention_mask`` (batch, length), and ``pixel_values`` (images, 3, size, size) when
        there is at least one image.
    """
    n = tokens_per_image(model)
    g = torch.Generator().manual_seed(seed)
    rows = [[1] + [IMAGE_TOKEN_ID] * (n * count) + text for text, count in zip(prompts, images_per_prompt)]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    size = model.config.vision_config.image_size
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    total = sum(images_per_prompt)
    if total:
        out["pixel_values"] = torch.randn(total, 3, size, size, generator=g)
    return out
