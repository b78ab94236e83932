"""vLLM requests as data (offline ``multi_modal_data`` and OpenAI-API ``image_embeds`` parts), and the server-side
pieces that need no vLLM: k(N, budget) against what the adapters keep, M-RoPE positions against the model's own."""

from __future__ import annotations

import base64
import io

import pytest
import torch

import zoprune
from zoprune.errors import InputError, UnsupportedModelError
from zoprune.integrations import vllm
from tiny_families import llava_next_batch, qwen_batch, tiny_llava_next, tiny_qwen2_5_vl, tiny_qwen2_vl
from tiny_models import llava_batch, tiny_llava


@pytest.fixture(scope="module")
def checkpoint_model(tiny_checkpoint):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval(), \
        AutoProcessor.from_pretrained(tiny_checkpoint)


def test_vllm_is_imported_nowhere():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(vllm))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "vllm" not in imported and "torch" in imported  # it builds data; vLLM is the server's business


def test_prune_for_vllm_prunes_the_prompt_it_returns(checkpoint_model, sample_image):
    from PIL import Image

    model, processor = checkpoint_model
    image = Image.open(sample_image).convert("RGB")
    pruned = zoprune.prune(model, "configs/zoo_prune_fast.yaml", budget=5)
    prompt, embeds = vllm.prune_for_vllm(pruned, processor, [image, image], "what colour is the circle ?")
    assert prompt.count("<image>") == 2 and "what colour is the circle ?" in prompt  # one placeholder per image
    inputs = processor(images=[image, image], text=[prompt], return_tensors="pt")
    expected = zoprune.prune(model, "configs/zoo_prune_fast.yaml", budget=5).embed(**inputs)
    assert [e.embeddings.shape for e in embeds] == [(5, model.config.text_config.hidden_size)] * 2
    assert all(torch.equal(a.embeddings, b.embeddings) and torch.equal(a.kept, b.kept)
               for a, b in zip(embeds, expected))

    request = vllm.offline_request(prompt, embeds)
    assert set(request) == {"prompt", "multi_modal_data"} and request["prompt"] == prompt
    images = request["multi_modal_data"]["image"]
    assert isinstance(images, list) and len(images) == 2 and all(t.ndim == 2 for t in images)
    assert all(t is e.embeddings for t, e in zip(images, embeds))


def test_chat_request_carries_each_image_as_an_image_embeds_part():
    embeddings = [torch.randn(5, 48).to(torch.bfloat16), torch.randn(3, 48).to(torch.bfloat16)]
    body = vllm.chat_request("llava-hf/llava-1.5-7b-hf", "What is shown?", embeddings, max_tokens=30)
    assert body["model"] == "llava-hf/llava-1.5-7b-hf" and body["max_tokens"] == 30
    [message] = body["messages"]
    assert message["role"] == "user"
    parts = message["content"]
    assert [p["type"] for p in parts] == ["image_embeds", "image_embeds", "text"]
    assert parts[-1]["text"] == "What is shown?"
    for part, tensor in zip(parts, embeddings):
        assert set(part) == {"type", "image_embeds"} and isinstance(part["image_embeds"], str)
        # read as vLLM's ImageEmbeddingMediaIO.load_base64 reads it (the library itself never calls torch.load)
        decoded = torch.load(io.BytesIO(base64.b64decode(part["image_embeds"], validate=True)), weights_only=True)
        assert decoded.dtype == torch.bfloat16 and torch.equal(decoded, tensor)


@pytest.mark.parametrize("bad, message", [
    (torch.randn(5, 48), "one \\(k, d_l\\) tensor per image"),
    ([torch.randn(1, 5, 48)], "must be a \\(k, d_l\\) tensor"),
    ([], "no image embeddings"),
])
def test_requests_refuse_what_vllm_would_misread(bad, message):
    with pytest.raises(InputError, match=message):
        vllm.offline_request("<image>", bad)


def test_videos_are_not_sent_as_image_embeds():
    video = zoprune.PrunedEmbedding(0, 0, "video", torch.zeros(2, 4), torch.arange(2), 8)
    with pytest.raises(InputError, match="video"):
        vllm.chat_messages("q", [video])


@pytest.mark.parametrize("build", [tiny_qwen2_vl, tiny_qwen2_5_vl])
def test_qwen_is_refused_on_the_client_side(build):
    with pytest.raises(UnsupportedModelError, match="server-side plugin"):
        vllm.prune_for_vllm(zoprune.prune(build(), budget=4), processor=None, images=[object()], question="q")


# --------------------------------------------------------------------------------------------- k(N, budget)

@pytest.mark.parametrize("budget", [5, 16, 100, 0.3, 1.0])
def test_kept_tokens_is_what_llava_keeps(budget):
    model = tiny_llava()
    inputs = llava_batch(model, [[6], [7]], [2, 1])
    pruned = zoprune.prune(model, "configs/zoo_prune_fast.yaml", budget=budget)
    embedded = pruned.embed(**inputs)
    images = pruned.adapter.extract(inputs, pruned.adapter.projector(), torch.float32)
    assert pruned.adapter.token_budgets(pruned.config.budget, images) == [vllm.kept_tokens(budget, 16)] * 3
    assert [e.embeddings.shape[0] for e in embedded] == [vllm.kept_tokens(budget, 16)] * 3


@pytest.mark.parametrize("newlines", ["keep", "drop"])
@pytest.mark.parametrize("budget", [6, 0.25])
def test_kept_tokens_is_what_llava_next_keeps(newlines, budget):
    model = tiny_llava_next()
    inputs = llava_next_batch(model, [[7], [8]], [[(30, 20), (16, 16)], [(20, 30)]])
    pruned = zoprune.prune(model, {"adapter": {"name": "llava_next", "newlines": newlines}, "budget": budget,
                                   "scorer": None, "selector": "divprune"})
    embedded = pruned.embed(**inputs)
    images = pruned.adapter.extract(inputs, pruned.adapter.projector(), torch.float32)
    assert pruned.adapter.token_budgets(pruned.config.budget, images) == \
        [vllm.kept_tokens(budget, tokens.num_tokens) for tokens in images]
    for tokens, e in zip(images, embedded):  # global policy: one entry per image
        rows = int(tokens.source.always.sum()) if newlines == "keep" else 0  # newline tokens: one per row
        assert e.embeddings.shape[0] == vllm.kept_tokens(budget, tokens.num_tokens, always=rows)
        assert tokens.num_tokens + int(torch.isin(torch.arange(e.num_tokens), tokens.packed, invert=True).sum()) \
            == e.num_tokens  # N + newlines = the unpruned length vLLM's get_num_image_tokens gives


@pytest.mark.parametrize("build", [tiny_qwen2_vl, tiny_qwen2_5_vl])
@pytest.mark.parametrize("budget", [3, 0.5])
def test_kept_tokens_is_what_qwen_keeps(build, budget):
    model = build()
    grids = [("image", (1, 4, 6)), ("video", (2, 4, 4)), ("image", (1, 6, 4))]
    inputs = qwen_batch(model, [[7], [8]], [grids[:2], grids[2:]])
    pruned = zoprune.prune(model, {"scorer": None, "selector": "divprune", "budget": budget})
    embedded = pruned.embed(**inputs)
    by_kind = {kind: [vllm.kept_tokens(budget, vllm.qwen_num_tokens(thw)) for k, thw in grids if k == kind]
               for kind in ("image", "video")}
    assert [e.embeddings.shape[0] for e in embedded if e.kind == "image"] == by_kind["image"]
    assert [e.embeddings.shape[0] for e in embedded if e.kind == "video"] == by_kind["video"]


def test_kept_tokens_refuses_nonsense():
    with pytest.raises(InputError):
        vllm.kept_tokens(4, 0)


# ------------------------------------------------------------------------------------------ M-RoPE positions

@pytest.mark.parametrize("kind, thw", [("image", (1, 4, 6)), ("image", (1, 6, 4)), ("video", (2, 4, 4))])
def test_mrope_positions_are_the_models_own(kind, thw):
    """Offset by the item's start, the (t, h, w) channels equal the 3-D positions transformers' Qwen2.5-VL gives
    the item's placeholders (tokens_per_second = 2 in the tiny config, 1 s per grid step by default)."""
    model = tiny_qwen2_5_vl()
    inputs = qwen_batch(model, [[7, 8]], [[("image", (1, 4, 4)), (kind, thw)]])
    pruned = zoprune.prune(model, budget=2)
    rope = pruned.adapter.rope_positions(inputs)[:, 0]  # (3, L)
    token = model.config.image_token_id if kind == "image" else model.config.video_token_id
    columns = (inputs["input_ids"][0] == token).nonzero().squeeze(-1)[-vllm.qwen_num_tokens(thw):]  # this item's
    start = int(rope[:, columns[0] - 1].max()) + 1  # the position after <|vision_start|>
    scale = model.config.vision_config.tokens_per_second if kind == "video" else 1.0
    ours = vllm.mrope_positions(thw, model.config.vision_config.spatial_merge_size, time_scale=scale)
    assert torch.equal(ours[:, :3].T + start, rope[:, columns])
    assert torch.equal(ours[:, 3], torch.full((ours.shape[0],), thw[2] // 2))


def test_pruned_item_appends_the_kept_rows_positions():
    embeddings = torch.randn(12, 8).to(torch.bfloat16)
    assert vllm.mrope_positions((1, 4, 6)).shape == (6, 4)  # a 2 x 3 grid of merged tokens
    positions = vllm.mrope_positions((2, 4, 6))  # 2 frames of it: 12 tokens
    kept = torch.tensor([0, 5, 7])
    item = vllm.pruned_item(embeddings, kept, positions)
    assert item.shape == (3, 12) and item.dtype == torch.bfloat16
    assert torch.equal(item[:, :8], embeddings[kept])
    assert torch.equal(item[:, 8:].long(), positions[kept])
    assert torch.equal(vllm.pruned_item(embeddings, kept), embeddings[kept])
    with pytest.raises(InputError, match="in \\[0, 12\\)"):
        vllm.pruned_item(embeddings, torch.tensor([12]))
    with pytest.raises(InputError, match="positions must be"):
        vllm.pruned_item(embeddings, kept, positions[:5])


# ------------------------------------------------------------------------------------- selection on tensors

# jacobian_norm (zoo-prune-fast) needs a Linear-activation-Linear projector; Qwen's merger normalises first
@pytest.mark.parametrize("family, method", [
    (family, method) for family in ("llava", "llava_bf16", "qwen2_5_vl")
    for method in ("zoo-prune", "zoo-prune-fast", "divprune", "norm", "random")
    if not (family == "qwen2_5_vl" and method == "zoo-prune-fast")])
def test_select_tokens_on_raw_tensors_is_the_pipelines_selection(family, method):
    from zoprune.methods import resolve_method

    if family == "qwen2_5_vl":
        model = tiny_qwen2_5_vl()
        inputs = qwen_batch(model, [[7], [8]], [[("image", (1, 4, 6))], [("image", (1, 6, 4))]])
    else:
        model = tiny_llava(dtype=torch.bfloat16 if family == "llava_bf16" else torch.float32)
        inputs = llava_batch(model, [[6], [7]], [2, 1])
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    config = resolve_method(method)[1].to_dict() | {"budget": 3}
    pruned = zoprune.prune(model, config)
    selections = pruned.select(**inputs)
    images = pruned.adapter.extract(inputs, pruned.adapter.projector(), model.dtype)  # the model's own tensors
    assert len(images) == len(selections) == (2 if family == "qwen2_5_vl" else 3)
    for tokens, selection in zip(images, selections):
        kept = vllm.select_tokens(config, tokens.features, tokens.model_embeddings, pruned.adapter.projector(),
                                  grid=tokens.grid)
        assert torch.equal(kept, selection.kept), (tokens.sample, tokens.image)


@pytest.mark.parametrize("config, message", [
    ({"scorer": "cls_attention", "selector": "topk"}, "needs cls_attention"),
    ({"scorer": "cls_attention", "selector": "visionzip"}, "merges tokens"),
    ({"scorer": None, "selector": "fastv"}, "inside the language model"),
])
def test_select_tokens_refuses_what_needs_more_than_the_encoder_output(config, message):
    with pytest.raises(zoprune.ConfigError, match=message):
        vllm.select_tokens(config, torch.randn(6, 4), torch.randn(6, 8), torch.nn.Linear(4, 8))
