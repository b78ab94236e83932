"""The shapes LLaVA: builders for the config / tokenizer / processor, and loading of the shipped checkpoint.

The checkpoint in ``zoprune/shapes/weights`` is an ordinary transformers checkpoint::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(path)   # LlavaForConditionalGeneration
    processor = AutoProcessor.from_pretrained(path)              # LlavaProcessor

Prompt format (what the chat template produces): ``USER: <image>\\n{question} ASSISTANT:``; the tokenizer adds
``<s>`` in front and the processor expands ``<image>`` to 144 image tokens (12x12 patches of a 96 px image,
[CLS] dropped). The answer is one word followed by ``</s>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from zoprune.shapes.data import IMAGE_SIZE, PATCH_SIZE, normalize_answer, vocabulary

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, IMAGE_TOKEN_ID, UNK_ID = range(5)
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% endif %}{{ ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% endif %}{{ '</s>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: Architecture of the shipped checkpoint (keyword arguments of :func:`build_model`).
DEFAULT_ARCH = {"vision_hidden": 128, "vision_layers": 4, "vision_heads": 4, "vision_mlp": 384,
                "text_hidden": 192, "text_layers": 4, "text_heads": 6, "text_kv_heads": 6, "text_mlp": 512}


def prompt(question: str) -> str:
    """The single-turn prompt the checkpoint was trained on (identical to the chat template's output)."""
    return f"USER: <image>\n{question} ASSISTANT:"


def default_model_path() -> Path:
    """Directory of the checkpoint shipped inside the package."""
    return Path(__file__).resolve().parent / "weights"


def build_tokenizer():
    """Word-level tokenizer (``tokenizers`` WordLevel wrapped in ``PreTrainedTokenizerFast``), left padding,
    lower-casing, punctuation split off, ``<s>`` prepended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # whitespace + punctuation
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", BOS_ID)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", padding_side="left",
                                   extra_special_tokens={"image_token": "<image>"},
                                   model_max_length=512)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_image_processor():
    """CLIP preprocessing (resize to 96, centre crop 96, rescale, CLIP mean/std) with the PIL backend, so that
    no torchvision is needed."""
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Cls
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as Cls
    return Cls(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def build_processor():
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=build_image_processor(), tokenizer=build_tokenizer(),
                          patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)


def build_config(vision_hidden: int = 128, vision_layers: int = 4, vision_heads: int = 4, vision_mlp: int = 384,
                 text_hidden: int = 192, text_layers: int = 3, text_heads: int = 6, text_kv_heads: int = 2,
                 text_mlp: int = 512):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vocab_size = len(SPECIAL_TOKENS) + len(vocabulary())
    vocab_size = (vocab_size + 7) // 8 * 8
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=vision_mlp,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=vision_hidden,
                              hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=text_mlp,
                       num_hidden_layers=text_layers, num_attention_heads=text_heads,
                       num_key_value_heads=text_kv_heads, max_position_embeddings=512, rope_theta=10000.0,
                       pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", image_seq_length=NUM_IMAGE_TOKENS, tie_word_embeddings=False)


def build_model(seed: int = 0, **arch):
    """A randomly initialised shapes LLaVA (seeded), with generation defaults for one-word answers."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(**{**DEFAULT_ARCH, **arch}))
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = PAD_ID, BOS_ID, EOS_ID
    gen.max_new_tokens, gen.do_sample = 4, False
    return model


def load(path: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """``(model, processor)`` from ``path`` (default: the shipped checkpoint), in eval mode."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = Path(path) if path is not None else default_model_path()
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(path)
    return model, processor


def _mean_tokens(features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [f.mean(dim=0, keepdim=True).expand_as(f).contiguous() for f in features]


@torch.no_grad()
def answer(model, processor, images: Sequence, questions: Sequence[str], mean_visual_tokens: bool = False,
           batch_size: int = 64, max_new_tokens: int = 3) -> list[str]:
    """Greedy answers (normalised words) of ``model`` to ``questions`` about ``images``, batched.

    With ``mean_visual_tokens`` every image's visual tokens are replaced by their mean token before the language
    model sees them (the "is the image used at all" ablation); they go in through ``mm_encoder_outputs``.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    out: list[str] = []
    for start in range(0, len(questions), batch_size):
        imgs = list(images[start:start + batch_size])
        texts = [prompt(q) for q in questions[start:start + batch_size]]
        inputs = processor(images=imgs, text=texts, return_tensors="pt", padding=True)
        kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
                  "max_new_tokens": max_new_tokens, "do_sample": False}
        pixel_values = inputs["pixel_values"].to(model.dtype)
        if mean_visual_tokens:
            feats = model.model.get_image_features(pixel_values=pixel_values,
                                                   vision_feature_layer=model.config.vision_feature_layer,
                                                   vision_feature_select_strategy=
                                                   model.config.vision_feature_select_strategy).pooler_output
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=_mean_tokens(feats))}
        else:
            kwargs["pixel_values"] = pixel_values
        generated = model.generate(**kwargs)
        new = generated[:, inputs["input_ids"].shape[1]:]
        out += [normalize_answer(t) for t in processor.batch_decode(new, skip_special_tokens=True)]
    return out


def accuracy_by_kind(examples, predictions: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy per question kind, plus ``"all"``."""
    per: dict[str, list[bool]] = {}
    for ex, pred in zip(examples, predictions):
        per.setdefault(ex.kind, []).append(pred == normalize_answer(ex.answer))
    result = {k: float(np.mean(v)) for k, v in per.items()}
    result["all"] = float(np.mean([p == normalize_answer(e.answer) for e, p in zip(examples, predictions)]))
    return result


def evaluate(model, processor, examples, mean_visual_tokens: bool = False, batch_size: int = 64) -> dict[str, float]:
    preds = answer(model, processor, [e.image for e in examples], [e.question for e in examples],
                   mean_visual_tokens=mean_visual_tokens, batch_size=batch_size)
    return accuracy_by_kind(examples, preds)
