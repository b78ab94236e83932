"""Tiny randomly initialised models built from transformers configs, with processors that need no download."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          PreTrainedTokenizerFast)

IMAGE_TOKEN_ID = 3
PAD_ID = 0
WORDS = ["<pad>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", "what", "colour", "is", "the", "circle", "square",
         "red", "blue", "green", "yes", "no", "how", "many", "?", "a", "an", "image", "describe", "this", "<unk>"]


def tiny_llava(seed: int = 0, image_size: int = 32, patch_size: int = 8, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "eager", vocab_size: int = 64,
               text_layers: int = 3) -> LlavaForConditionalGeneration:
    """A 3-layer CLIP + ``text_layers``-layer Llama LLaVA with (image_size / patch_size)^2 visual tokens per image
    (3 text layers by default, so FastV's default K = 2 leaves a layer that sees only the kept tokens)."""
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
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def llava_batch(model: LlavaForConditionalGeneration, prompts: list[list[int]], images_per_prompt: list[int],
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded inputs: each prompt is ``[1] + [image placeholders]*images + text ids``."""
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


def word_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>", padding_side="left",
                                   extra_special_tokens={"image_token": "<image>"})
    return fast


def save_tiny_llava(path: Path, seed: int = 0) -> Path:
    """Save a tiny LLaVA with a working LlavaProcessor, loadable by the ``from_pretrained`` path users take."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    model = tiny_llava(seed=seed)
    model.generation_config.eos_token_id = 2
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    template = ("{% for message in messages %}{{ message['role'].upper() + ': ' }}"
                "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image> "
                "{% else %}{{ part['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=word_tokenizer(), patch_size=8,
                               vision_feature_select_strategy="default", chat_template=template,
                               num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
