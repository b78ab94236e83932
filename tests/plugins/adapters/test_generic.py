"""The generic adapter on every family it covers, one test body over all of them (transformers' mixin style): exact
with every token kept (float32 and bf16, logits and greedy ids), pruned generation, the model's own embeddings,
separator tokens kept, and the error for a model of another shape."""

import math

import pytest
import torch

import zoprune
from zoprune.errors import UnsupportedModelError
from tiny_generic import AROUND_IDS, BREAK_ID, END_ID, FAMILIES, IMAGE_TOKEN_ID, batch, tiny_model

GREEDY = {"max_new_tokens": 4, "do_sample": False}
# prompts of different lengths: two images, one image, none
PROMPTS, IMAGES = [[8, 9, 10], [11], [12, 13, 14, 15]], [2, 1, 0]
NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module", params=NAMES)
def family(request):
    model = tiny_model(request.param)
    return request.param, model, batch(model, request.param, PROMPTS, IMAGES)


@pytest.mark.parametrize("dtype, attn", [(torch.float32, "eager"), (torch.bfloat16, "eager"), (torch.float32, "sdpa")],
                         ids=["float32", "bf16", "sdpa"])
@pytest.mark.parametrize("name", NAMES)
def test_keep_all_is_exact(name, dtype, attn):
    model = tiny_model(name, dtype=dtype, attn_implementation=attn)
    inputs = batch(model, name, PROMPTS, IMAGES)
    pruned = zoprune.prune(model, budget=10_000)
    assert pruned.adapter.name == ("gemma3" if name == "gemma3" else "generic")
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.equal(pruned(**inputs).logits, expected)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))
    assert {(s.sample, s.image) for s in pruned.last_selection} >= {(0, 0), (1, 0)}


def test_tokens_are_the_models_own(family):
    """model_embeddings are bit-identical to what get_image_features returns; the projector handed to scorers maps
    each token's features to its embedding."""
    name, model, inputs = family
    pruned = zoprune.prune(model, budget=10_000)
    images = pruned._extract(inputs)
    keys = pruned.adapter.vision_keys()
    with torch.no_grad():
        pooled = model.model.get_image_features(**{k: v for k, v in inputs.items() if k in keys}).pooler_output
        expected = torch.cat([p.reshape(-1, p.shape[-1]) for p in pooled])
        assert torch.equal(torch.cat([t.model_embeddings for t in images]), expected)
        projector = pruned.adapter.projector()
        for tokens in images:
            assert torch.allclose(projector(tokens.features), tokens.model_embeddings, atol=1e-5)


def test_pruned_generate_keeps_the_budget_and_the_text(family):
    """Each image keeps k tokens (its tiles sharing them), the prompt's text tokens, separators included, all stay,
    and generate returns the caller's prompt followed by new tokens."""
    name, model, inputs = family
    k = 5
    pruned = zoprune.prune(model, budget=k)
    output = pruned.generate(**inputs, **GREEDY)
    length = inputs["input_ids"].shape[1]
    assert output.shape == (3, length + GREEDY["max_new_tokens"])
    assert torch.equal(output[:, :length], inputs["input_ids"])
    per_source: dict = {}
    for tokens, s in zip(pruned._extract(inputs), pruned.last_selection):
        per_source.setdefault(id(tokens.source), []).append(s.num_kept)
    assert all(sum(counts) == max(k, len(counts)) for counts in per_source.values())
    short = pruned.prepare(**inputs)
    assert int((short["input_ids"] == IMAGE_TOKEN_ID).sum()) == sum(s.num_kept for s in pruned.last_selection)
    for b in range(3):
        text = inputs["input_ids"][b][inputs["attention_mask"][b].bool()]
        kept_text = short["input_ids"][b][short["attention_mask"][b].bool()]
        assert torch.equal(text[text != IMAGE_TOKEN_ID], kept_text[kept_text != IMAGE_TOKEN_ID])
    separators = (*AROUND_IDS, BREAK_ID, END_ID)
    if FAMILIES[name].around or FAMILIES[name].breaks:
        assert int(torch.isin(short["input_ids"], torch.tensor(separators)).sum()) > 0
    if FAMILIES[name].token_types:  # Gemma 3's image blocks, PaliGemma's prefix: pruned like every per-token tensor
        assert short["token_type_ids"].shape == short["input_ids"].shape
        assert torch.equal(short["token_type_ids"] == 1, (short["input_ids"] == IMAGE_TOKEN_ID)
                           & (FAMILIES[name].token_types == "image"))


def test_gemma3_image_blocks_stay_bidirectional_among_the_kept_tokens():
    """Gemma 3 lets an image's tokens attend to each other in both directions (one block per run of image tokens).
    After pruning each image is still one run, so its kept tokens form one block; the first kept token sees the
    last one."""
    from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

    model = tiny_model("gemma3")
    inputs = batch(model, "gemma3", [[8, 9]], [2])
    short = zoprune.prune(model, budget=3).prepare(**inputs)
    blocks = get_block_sequence_ids_for_mask(short["token_type_ids"])[0]
    image = short["input_ids"][0] == IMAGE_TOKEN_ID
    assert sorted(blocks[image].unique().tolist()) == [0, 1] and (blocks[image].bincount() == 3).all()


def test_existing_adapters_keep_their_classes():
    from tiny_models import tiny_llava

    assert zoprune.prune(tiny_llava()).adapter.name == "llava"


class _NoEncoderOutputs(torch.nn.Module):
    """A model with a vision tower and projector whose forward cannot take precomputed vision features."""

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.multi_modal_projector = torch.nn.Linear(4, 4)

        def get_image_features(self, pixel_values):
            return self.multi_modal_projector(pixel_values)

        def forward(self, input_ids, pixel_values=None):
            return input_ids

    def __init__(self):
        super().__init__()
        self.model = self.Inner()
        self.config = type("Config", (), {"image_token_id": 3, "model_type": "made_up"})()


def test_a_model_of_another_shape_gets_an_error_naming_what_it_lacks():
    with pytest.raises(UnsupportedModelError, match="mm_encoder_outputs"):
        zoprune.prune(_NoEncoderOutputs())
    model = _NoEncoderOutputs()
    del model.model.multi_modal_projector
    model.model.forward = lambda input_ids, pixel_values=None, mm_encoder_outputs=None: input_ids
    with pytest.raises(UnsupportedModelError, match="no projector module"):
        zoprune.prune(model, adapter="generic")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_llava_next_video_images_keep_all_is_exact_and_prune(dtype):
    from tiny_families import llava_next_batch
    from tiny_generic import tiny_llava_next_video

    model = tiny_llava_next_video(dtype=dtype)
    inputs = llava_next_batch(model, [[8, 9, 10], [11]], [[(30, 20), (16, 16)], [(20, 30)]])
    pruned = zoprune.prune(model, budget=10_000)
    assert pruned.adapter.name == "llava_next_video"
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.equal(pruned(**inputs).logits, expected)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))
    small = zoprune.prune(model, budget=5)
    output = small.generate(**inputs, **GREEDY)
    assert torch.equal(output[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert [s.num_kept for s in small.last_selection] == [5, 5, 5]


@pytest.mark.parametrize("policy", ["global", "per_tile"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_llava_onevision_keep_all_is_exact_and_prunes(dtype, policy):
    from tiny_families import llava_next_batch
    from tiny_generic import tiny_llava_onevision

    model = tiny_llava_onevision(dtype=dtype)
    inputs = llava_next_batch(model, [[8, 9, 10], [11], [12]], [[(30, 20)], [(16, 16)], [(20, 30)]])
    adapter = {"name": "llava_onevision", "budget_policy": policy}
    pruned = zoprune.prune(model, budget=10_000, adapter=adapter)
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.equal(pruned(**inputs).logits, expected)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))
    small = zoprune.prune(model, budget=5, adapter=adapter)
    output = small.generate(**inputs, **GREEDY)
    assert torch.equal(output[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    per_image: dict = {}
    for s in small.last_selection:
        per_image[(s.sample, s.image)] = per_image.get((s.sample, s.image), 0) + s.num_kept
    assert per_image == {(0, 0): 5, (1, 0): 5, (2, 0): 5}


def test_llava_onevision_refuses_what_it_cannot_prune_exactly():
    """An image whose grid the model shrinks by interpolation, and prompts with several images (reduced to their
    base view by the model), are errors that say so."""
    from tiny_families import llava_next_batch
    from tiny_generic import tiny_llava_onevision

    model = tiny_llava_onevision()
    inputs = llava_next_batch(model, [[8]], [[(30, 20)]])
    model.config.vision_aspect_ratio = "anyres_max_1"  # this 2x2-crop image exceeds a 1-view grid: interpolated
    with pytest.raises(UnsupportedModelError, match="interpolation"):
        zoprune.prune(model, budget=5).select(**inputs)
    model.config.vision_aspect_ratio = "anyres_max_9"
    with pytest.raises(UnsupportedModelError, match="several images"):
        zoprune.prune(model, budget=5).select(**inputs, batch_num_images=torch.tensor([2]))


def test_llava_onevision_refuses_pruning_inside_the_language_model_by_name():
    from tiny_families import llava_next_batch
    from tiny_generic import tiny_llava_onevision

    model = tiny_llava_onevision()
    inputs = llava_next_batch(model, [[8]], [[(30, 20)]])
    with pytest.raises(UnsupportedModelError, match="llava_onevision.*cannot prune inside the language model"):
        zoprune.prune(model, budget=3, scorer=None, selector={"name": "fastv", "layer": 1})(**inputs)


def test_lfm2_vl_images_of_different_sizes_are_refused_with_the_mismatch():
    """LFM2-VL pads a batch's images to one grid before its projector, so the projector has rows that are no
    placeholder's; the generic adapter says so rather than pairing the wrong rows."""
    model = tiny_model("lfm2_vl")
    inputs = batch(model, "lfm2_vl", [[8, 9]], [2])
    inputs["spatial_shapes"][1] = torch.tensor([4, 8])  # the second image is half as tall: padded in the projector
    inputs["pixel_attention_mask"][1, 32:] = False
    # 8 placeholders fewer (BOS, then 24 placeholders): what the model places for the two images
    inputs["input_ids"] = torch.cat([inputs["input_ids"][:, :1], inputs["input_ids"][:, 9:]], dim=1)
    inputs["attention_mask"] = inputs["attention_mask"][:, 8:]
    assert int((inputs["input_ids"] == IMAGE_TOKEN_ID).sum()) == 24
    with pytest.raises(UnsupportedModelError, match="projector sees 32 tokens but the model places 24"):
        zoprune.prune(model, budget=3).select(**inputs)


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if f.tiles))
def test_tiles_are_pruned_one_by_one_with_the_budget_shared_between_them(name):
    """Idefics3 and SmolVLM hand the projector each crop (tile) of an image separately and write each tile's
    placeholders between their own separators. Each tile is an entry of its own (its own grid, its share of the
    prompt's budget), and the tokens kept of a tile stay in that tile's run of placeholders."""
    model = tiny_model(name)
    inputs = batch(model, name, [[8, 9], [10]], [2, 1])  # two images (4 tiles) and one image (2 tiles)
    with torch.no_grad():  # tokens per tile, from the model's own code on one tile
        pooled = model.model.get_image_features(pixel_values=inputs["pixel_values"][:1, :1]).pooler_output
    tile = sum(p.reshape(-1, p.shape[-1]).shape[0] for p in pooled)
    side = math.isqrt(tile)
    assert side * side == tile
    k = 7
    pruned = zoprune.prune(model, budget=k, selector="uniform", scorer=None)
    pruned.select(**inputs)
    per_prompt: dict = {}
    for s in pruned.last_selection:
        per_prompt.setdefault(s.sample, []).append(s)
    assert {sample: len(entries) for sample, entries in per_prompt.items()} == {0: 4, 1: 2}
    assert all(s.num_tokens == tile and s.grid == (side, side) for s in pruned.last_selection)
    assert [s.num_kept for s in per_prompt[0]] == [2, 2, 2, 1]  # 7 shared evenly, the remainder first
    assert [s.num_kept for s in per_prompt[1]] == [4, 3]
    short = pruned.prepare(**inputs)["input_ids"]
    for sample, entries in per_prompt.items():
        row = short[sample].tolist()
        starts = [i for i, t in enumerate(row) if t == AROUND_IDS[0]]  # each tile: [begin, 9, placeholders...]
        runs = [row[a:b].count(IMAGE_TOKEN_ID) for a, b in zip(starts, starts[1:])]
        assert runs == [s.num_kept for s in entries]
