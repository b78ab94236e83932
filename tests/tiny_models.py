"""Tiny randomly initialised models built from transformers configs, with processors that need no download.

The model and its batches are zoprune.testing's (shipped, so plugin authors can use them); this adds a word-level
tokenizer and a saved checkpoint with a working processor for the command-line tests."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from zoprune.testing import IMAGE_TOKEN_ID, PAD_ID, llava_batch, tiny_llava, tokens_per_image  # noqa: F401

WORDS = ["<pad>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", "what", "colour", "is", "the", "circle", "square",
         "red", "blue", "green", "yes", "no", "how", "many", "?", "a", "an", "image", "describe", "this", "<unk>"]


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
