"""Tiny randomly initialised models of the families the generic adapter covers, and hand-built inputs for them.

Every model is its family's default config shrunk (1-2 layers, widths 32-48, 32 px images of 4 px patches), so the
family's own code runs at toy size. Inputs are laid out as the processors lay them out (one run of placeholders per
image, or per tile, in batch order, the family's text tokens around them, left padded) but built from token ids:
placeholder counts come from the model's own ``get_image_features``, never from the adapter under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
import transformers
from transformers import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
IMAGE_TOKEN_ID = 3
AROUND_IDS = (4, 5)  # begin / end of an image (Gemma 3) or of a tile (Idefics3's fake token around image)
BREAK_ID = 6  # Mistral3's [IMG_BREAK] after each row, [IMG_END] (7) after the last
END_ID = 7
TEXT_IDS = range(8, 60)

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=4)
TEXT = dict(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=12, max_position_embeddings=512, pad_token_id=PAD_ID,
            bos_token_id=BOS_ID, eos_token_id=EOS_ID)


@dataclass(frozen=True)
class Family:
    """How to build one family's tiny model and lay out its inputs."""

    model_type: str
    top: dict = field(default_factory=dict)  # config fields of the composite config
    vision: dict = field(default_factory=dict)  # overrides of VISION
    text: dict = field(default_factory=dict)  # overrides of TEXT
    tiles: bool = False  # pixel_values (B, tiles, 3, H, W) with a pixel_attention_mask (Idefics3, SmolVLM)
    sizes: bool = False  # images of several sizes with image_sizes (Mistral3's Pixtral tower)
    token_types: str | None = None  # "image": 1 at the image's placeholders (Gemma 3); "prefix": all 0 (PaliGemma)
    around: bool = False  # begin/end tokens around each image's (or tile's) placeholders
    breaks: bool = False  # a break token after each row of placeholders, an end token after the last
    naflex: bool = False  # pixel_values as (images, patches, 3*p*p) with spatial_shapes and a patch mask (LFM2-VL)
    grid: bool = False  # a Qwen2.5-VL tower: pixel_values as (patches, 3*2*2*2) with image_grid_thw (HyperCLOVAX)

    @property
    def class_name(self) -> str:
        return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[self.model_type]


FAMILIES: dict[str, Family] = {
    "vipllava": Family("vipllava", top=dict(vision_feature_layers=[-2, -1], projector_hidden_act="gelu")),
    "aya_vision": Family("aya_vision", top=dict(alignment_intermediate_size=64, downsample_factor=2)),
    "mistral3": Family("mistral3", top=dict(spatial_merge_size=2, vision_feature_layer=-1),
                       vision=dict(head_dim=8, num_channels=3), sizes=True, breaks=True),
    "paligemma": Family("paligemma", vision=dict(projection_dim=48), token_types="prefix"),
    "gemma3": Family("gemma3", top=dict(mm_tokens_per_image=16, boi_token_index=AROUND_IDS[0],
                                        eoi_token_index=AROUND_IDS[1]), token_types="image", around=True),
    "internvl": Family("internvl", top=dict(downsample_ratio=0.5, vision_feature_layer=-1),
                       vision=dict(image_size=[32, 32], patch_size=[4, 4])),
    "idefics3": Family("idefics3", top=dict(scale_factor=2), tiles=True, around=True),
    "smolvlm": Family("smolvlm", top=dict(scale_factor=2), tiles=True, around=True),
    "cohere2_vision": Family("cohere2_vision", top=dict(alignment_intermediate_size=64, downsample_factor=2)),
    "video_llava": Family("video_llava"),
    "lighton_ocr": Family("lighton_ocr", top=dict(spatial_merge_size=2, vision_feature_layer=-1),
                          vision=dict(head_dim=8, num_channels=3), sizes=True, breaks=True),
    "lfm2_vl": Family("lfm2_vl", top=dict(projector_hidden_size=48, downsample_factor=2),
                      vision=dict(num_patches=64), text=dict(layer_types=["conv", "full_attention"],
                                                             full_attn_idxs=[1], block_multiple_of=16),
                      naflex=True),
    "hyperclovax_vision_v2": Family("hyperclovax_vision_v2", vision=dict(
        depth=2, num_heads=4, out_hidden_size=32, patch_size=2, window_size=8, fullatt_block_indexes=[1]), grid=True),
    "janus": Family("janus", vision=dict(projection_dim=48)),
    "deepseek_vl": Family("deepseek_vl"),
    "qianfan_ocr": Family("qianfan_ocr", top=dict(downsample_ratio=0.5, vision_feature_layer=-1),
                          vision=dict(image_size=[32, 32], patch_size=[4, 4])),
}


def _built(model_class: type, config, attn_implementation: str, dtype: torch.dtype) -> torch.nn.Module:
    """``model_class(config)`` with ``attn_implementation``, in eval mode and ``dtype``; generation pads with PAD_ID
    and never stops early (random weights: lengths stay predictable). Seed before calling."""
    config._attn_implementation = attn_implementation
    model = model_class(config).eval().to(dtype)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None
    return model


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "eager") -> torch.nn.Module:
    """The family's default config at toy size, randomly initialised."""
    family = FAMILIES[name]
    config = CONFIG_MAPPING[family.model_type](**family.top)
    for sub, sizes in ((config.vision_config, {**VISION, **family.vision}),
                       (getattr(config, "text_config", None), {**TEXT, **family.text})):
        for key, value in sizes.items():
            if hasattr(sub, key):
                setattr(sub, key, value)
    for key in ("image_token_id", "image_token_index"):
        if hasattr(config, key):
            setattr(config, key, IMAGE_TOKEN_ID)
    for sub in (config.vision_config, getattr(config, "text_config", None)):
        if sub is not None:
            sub._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _built(getattr(transformers, family.class_name), config, attn_implementation, dtype)


def batch(model: torch.nn.Module, name: str, prompts: list[list[int]], images: list[int],
          seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded inputs: prompt b is ``[BOS] + images[b] images + prompts[b]``, each image laid out as the family's
    processor lays it out. With ``tiles``, an image is two tiles (Idefics3's crops) and a prompt's tiles share one
    row of ``pixel_values``; with ``sizes`` the images alternate between 32x32 and 32x16 px."""
    family = FAMILIES[name]
    g = torch.Generator().manual_seed(seed)
    side = 32
    total = sum(images)
    out: dict[str, torch.Tensor] = {}
    if total:
        if family.tiles:
            tiles = 2 * max(images)
            pixels = torch.zeros(len(images), tiles, 3, side, side)
            mask = torch.zeros(len(images), tiles, side, side, dtype=torch.long)
            for b, count in enumerate(images):
                pixels[b, :2 * count] = torch.randn(2 * count, 3, side, side, generator=g)
                mask[b, :2 * count] = 1
            out["pixel_values"], out["pixel_attention_mask"] = pixels, mask
        elif family.grid:  # 8 x 8 patches of 2 px (16 merged tokens) per image, flattened as the processor does
            out["pixel_values"] = torch.randn(total * 64, 3 * 2 * 2 * 2, generator=g)
            out["image_grid_thw"] = torch.tensor([[1, 8, 8]] * total)
        elif family.naflex:  # 8 x 8 patches of 4 px per image, each patch flattened as the processor does
            patches = (side // 4) ** 2
            out["pixel_values"] = torch.randn(total, patches, 3 * 4 * 4, generator=g)
            out["spatial_shapes"] = torch.tensor([[side // 4, side // 4]] * total)
            out["pixel_attention_mask"] = torch.ones(total, patches, dtype=torch.bool)
        elif family.sizes:
            hw = [(side, side) if i % 2 == 0 else (side, side // 2) for i in range(total)]
            pixels = torch.zeros(total, 3, side, side)  # the processor pads to the largest size
            for i, (h, w) in enumerate(hw):
                pixels[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
            out["pixel_values"], out["image_sizes"] = pixels, torch.tensor(hw)
        else:
            out["pixel_values"] = torch.randn(total, 3, side, side, generator=g)
        out["pixel_values"] = out["pixel_values"].to(model.dtype)
    runs = _runs(model, family, out, images) if total else []
    rows, types, index = [], [], 0
    for text, count in zip(prompts, images):
        row = [BOS_ID]
        for _ in range(count if not family.tiles else 1):
            row += runs[index]
            index += 1
        rows.append(row + list(text))
        types.append([int(family.token_types == "image" and t == IMAGE_TOKEN_ID) for t in rows[-1]])
    width = max(len(r) for r in rows)
    out["input_ids"] = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows])
    out["attention_mask"] = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    if family.token_types:
        out["token_type_ids"] = torch.tensor([[0] * (width - len(t)) + t for t in types])
    return out


def _runs(model: torch.nn.Module, family: Family, pixels: dict, images: list[int]) -> list[list[int]]:
    """Each image's (or, with tiles, each prompt's) token run, placeholder counts from the model's own code."""
    with torch.no_grad():
        pooled = model.model.get_image_features(**pixels).pooler_output
    entries = list(pooled) if isinstance(pooled, (list, tuple)) or pooled.dim() == 3 else [pooled]
    lengths = [e.reshape(-1, e.shape[-1]).shape[0] for e in entries]
    runs = []
    for i, length in enumerate(lengths):
        if family.breaks:  # rows of the merged grid: 32 px / (4 px * 2) = 4 tokens per row
            row = 4 if pixels["image_sizes"][i, 1] == 32 else 2
            run = []
            for r in range(length // row):
                run += [IMAGE_TOKEN_ID] * row + [BREAK_ID if r < length // row - 1 else END_ID]
        elif family.tiles and not length:  # a prompt without images
            run = []
        elif family.tiles:  # a prompt's tiles, each between fake tokens, as the processor writes them
            tile = length // (2 * images[i])
            run = [AROUND_IDS[0], 9, *([IMAGE_TOKEN_ID] * tile)] * (length // tile) + [AROUND_IDS[0]]
        elif family.around:
            run = [AROUND_IDS[0], *([IMAGE_TOKEN_ID] * length), AROUND_IDS[1]]
        else:
            run = [IMAGE_TOKEN_ID] * length
        runs.append(run)
    return runs



def tiny_llava_next_video(seed: int = 0, dtype: torch.dtype = torch.float32,
                          attn_implementation: str = "eager") -> torch.nn.Module:
    """LLaVA-NeXT-Video at the size of ``tiny_families.tiny_llava_next`` (its images are LLaVA-NeXT's; lay out
    inputs with ``tiny_families.llava_next_batch``)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=16, patch_size=4, projection_dim=32)
    text = LlamaConfig(**{key: value for key, value in TEXT.items() if key != "head_dim"})
    config = LlavaNextVideoConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
                                  video_token_index=AROUND_IDS[0], vision_feature_layer=-2,
                                  vision_feature_select_strategy="default",
                                  image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]], projector_hidden_act="gelu")
    return _built(LlavaNextVideoForConditionalGeneration, config, attn_implementation, dtype)


def tiny_qwen3_vl(seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "eager",
                  moe: bool = False, family: str = "qwen3_vl") -> torch.nn.Module:
    """A 2-block Qwen3-VL tower (2 px patches, 2x2 merge, deepstack from block 0) + a 2-layer language model (MoE:
    4 experts, 2 per token); ``family="qwen3_5"``: Qwen3.5's (no deepstack; a linear-attention layer then a full
    one). Lay out inputs with :func:`qwen3_batch`."""
    from tiny_families import IMAGE_TOKEN_ID as QWEN_IMAGE, VIDEO_TOKEN_ID, VISION_END_ID, VISION_START_ID

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=48, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                  deepstack_visual_indexes=[0])
    text = {**TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2],
                                        "mrope_interleaved": True}}
    ids = dict(image_token_id=QWEN_IMAGE, video_token_id=VIDEO_TOKEN_ID, vision_start_token_id=VISION_START_ID,
               vision_end_token_id=VISION_END_ID)
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                    shared_expert_intermediate_size=32)
    if family == "qwen3_5":
        vision.pop("deepstack_visual_indexes")
        text.update(head_dim=24, partial_rotary_factor=0.5, layer_types=["linear_attention", "full_attention"],
                    linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4)
        text["rope_parameters"] = {**text["rope_parameters"], "partial_rotary_factor": 0.5}
    names = {("qwen3_vl", False): "Qwen3VL", ("qwen3_vl", True): "Qwen3VLMoe", ("qwen3_5", False): "Qwen3_5",
             ("qwen3_5", True): "Qwen3_5Moe"}[(family, moe)]
    Config = getattr(transformers, f"{names}Config")
    Model = getattr(transformers, f"{names}ForConditionalGeneration")
    torch.manual_seed(seed)
    config = Config(vision_config=vision, text_config=text, **ids)
    return _built(Model, config, attn_implementation, dtype)


def qwen3_batch(model: torch.nn.Module, prompts: list[list[int]],
                visuals: list[list[tuple[str, tuple[int, int, int]]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Qwen3-VL inputs as ``tiny_families.qwen_batch`` lays them out, except that a video is one run per temporal
    slice, each after a timestamp token (Qwen3-VL's processor writes ``<t> <vision_start> frame <vision_end>``)."""
    from tiny_families import qwen_batch

    out = qwen_batch(model, prompts, [[item for item in items if item[0] == "image"] for items in visuals], seed)
    g = torch.Generator().manual_seed(seed + 1)
    vision = model.config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    ids, types, grids = [], [], []
    for b, items in enumerate(visuals):
        row = out["input_ids"][b][out["attention_mask"][b].bool()].tolist()
        kinds = out["mm_token_type_ids"][b][out["attention_mask"][b].bool()].tolist()
        text = len(prompts[b])
        for kind, (t, h, w) in (item for item in items if item[0] == "video"):
            frame = [TEXT_IDS[-1], model.config.vision_start_token_id] + \
                [model.config.video_token_id] * (h * w // 4) + [model.config.vision_end_token_id]
            cut = len(row) - text
            row = row[:cut] + frame * t + row[cut:]
            kinds = kinds[:cut] + ([0, 0] + [2] * (h * w // 4) + [0]) * t + kinds[cut:]
            grids.append([t, h, w])
        ids.append(row)
        types.append(kinds)
    width = max(len(r) for r in ids)
    out["input_ids"] = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in ids])
    out["attention_mask"] = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    out["mm_token_type_ids"] = torch.tensor([[0] * (width - len(t)) + t for t in types])
    if grids:
        thw = torch.tensor(grids)
        out["pixel_values_videos"] = torch.randn(int(thw.prod(-1).sum()), patch_dim, generator=g).to(model.dtype)
        out["video_grid_thw"] = thw
    return out


def tiny_llava_onevision(seed: int = 0, dtype: torch.dtype = torch.float32,
                         attn_implementation: str = "eager") -> torch.nn.Module:
    """LLaVA-OneVision at the size of ``tiny_families.tiny_llava_next`` (a SigLIP tower, a Qwen2 language model);
    lay out inputs with ``tiny_families.llava_next_batch``."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=16, patch_size=4)
    text = Qwen2Config(**{key: value for key, value in TEXT.items() if key != "head_dim"})
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
                                  video_token_index=AROUND_IDS[0], vision_feature_layer=-1,
                                  vision_feature_select_strategy="full",
                                  image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]])
    return _built(LlavaOnevisionForConditionalGeneration, config, attn_implementation, dtype)


def tiny_glm4v(seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "eager",
               moe: bool = False) -> torch.nn.Module:
    """A 2-block GLM-4V tower (2 px patches, 2x2 merge by a strided convolution) + a 2-layer language model (MoE:
    4 experts, 2 per token). Lay out inputs with :func:`qwen3_batch` (images), its ids are Qwen's."""
    from tiny_families import IMAGE_TOKEN_ID as QWEN_IMAGE, VIDEO_TOKEN_ID, VISION_END_ID, VISION_START_ID

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=48, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, image_size=16)
    text = {**TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 1],
                                        "partial_rotary_factor": 0.5}}  # rotary half 3
    if moe:
        text.update(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                    first_k_dense_replace=0, n_group=1, topk_group=1)
    ids = dict(image_token_id=QWEN_IMAGE, video_token_id=VIDEO_TOKEN_ID, image_start_token_id=VISION_START_ID,
               image_end_token_id=VISION_END_ID, video_start_token_id=VISION_START_ID,
               video_end_token_id=VISION_END_ID)
    name = "Glm4vMoe" if moe else "Glm4v"
    torch.manual_seed(seed)
    config = getattr(transformers, f"{name}Config")(vision_config=vision, text_config=text, **ids)
    return _built(getattr(transformers, f"{name}ForConditionalGeneration"), config, attn_implementation, dtype)
