"""FastV on LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL (2-layer language models: K = 1, so layer 0 sees every token and
layer 1 only the kept ones).

The reference is the unpruned model run whole, with the dropped image tokens masked out as keys from layer K on
(FastV's original "attention mask" form): every token keeps the position the model itself gives it, so for Qwen
this checks that kept tokens keep their 3-D M-RoPE positions and that decoding continues with the right positions
and rope deltas."""

import pytest
import torch

import zoprune
from tiny_families import (IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_END_ID, VISION_START_ID, llava_next_batch,
                           qwen_batch, tiny_llava_next, tiny_qwen2_5_vl, tiny_qwen2_vl)

K = 1
# random weights may generate a placeholder id, which a whole forward pass would read as an image: never emit one
SPECIAL = [IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_START_ID, VISION_END_ID]
GREEDY = {"max_new_tokens": 4, "do_sample": False, "suppress_tokens": SPECIAL}
QWEN_VISUALS = [[("image", (1, 4, 6))], [("image", (1, 4, 4)), ("video", (2, 4, 4))]]
NEXT_SIZES = [[(16, 32)], [(32, 32), (16, 16)]]


def batch(family, model, prompts=([7, 8, 9, 10], [11])):
    if family == "llava_next":
        return llava_next_batch(model, list(prompts), NEXT_SIZES)
    return qwen_batch(model, list(prompts), QWEN_VISUALS)


MAKERS = {"llava_next": tiny_llava_next, "qwen2_vl": tiny_qwen2_vl, "qwen2_5_vl": tiny_qwen2_5_vl}


def fastv(model, budget, adapter=None, **params):
    extra = {"adapter": adapter} if adapter else {}
    return zoprune.prune(model, scorer=None, selector={"name": "fastv", "layer": K, **params}, budget=budget,
                         **extra)


def runs(ids, token_ids):
    """Consecutive runs of placeholder columns in one prompt, [(N_i,)], in order."""
    columns = torch.isin(ids, torch.tensor(token_ids)).nonzero().squeeze(-1)
    breaks = (columns[1:] != columns[:-1] + 1).nonzero().squeeze(-1) + 1
    return list(torch.tensor_split(columns, breaks.tolist()))


def entry_columns(family, model, inputs):
    """The scored columns of every image / video, in batch order, worked out without the adapter. LLaVA-NeXT
    images sit back to back, so their runs are split by the model's own packed lengths; newline tokens are the
    packed rows equal to ``image_newline``."""
    ids = inputs["input_ids"]
    if family != "llava_next":
        return [run for row in ids for run in runs(row, [IMAGE_TOKEN_ID, VIDEO_TOKEN_ID])]
    with torch.no_grad():
        packed = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                image_sizes=inputs["image_sizes"]).pooler_output
    out, images = [], iter(packed)
    for row in ids:
        start, columns = 0, (row == IMAGE_TOKEN_ID).nonzero().squeeze(-1)
        while start < columns.numel():
            features = next(images)
            newline = (features == model.model.image_newline).all(dim=-1)
            out.append(columns[start:start + features.shape[0]][~newline])
            start += features.shape[0]
    return out


def dropped_columns(family, model, inputs, selections):
    drop = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    for selection, columns in zip(selections, entry_columns(family, model, inputs)):
        gone = torch.ones(columns.numel(), dtype=torch.bool)
        gone[selection.kept] = False
        drop[selection.sample, columns[gone]] = True
    return drop


def masked_logits(model, inputs, drop):
    """Logits of the whole unpruned model with the ``drop`` (B, L) columns masked as keys in layers >= K."""
    def hook(module, args, kwargs):
        mask = kwargs["attention_mask"].clone()  # (B, 1, L, L) additive: eager attention
        blocked = drop[:, None, None, :] & ~torch.eye(drop.shape[1], dtype=torch.bool)  # keep rows non-empty
        kwargs["attention_mask"] = mask.masked_fill(blocked, torch.finfo(mask.dtype).min)
        return args, kwargs

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in
               model.model.language_model.layers[K:]]
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()


def greedy_reference(model, inputs, drop, steps):
    """Greedy decoding by whole forward passes of the masked reference, new tokens appended to every row."""
    step_inputs = dict(inputs)
    for _ in range(steps):
        width = step_inputs["input_ids"].shape[1] - drop.shape[1]
        logits = masked_logits(model, step_inputs, torch.cat([drop, torch.zeros(drop.shape[0], width, dtype=bool)],
                                                             dim=1))
        last = logits[:, -1].index_fill(-1, torch.tensor(SPECIAL), float("-inf"))  # (B, V), as suppress_tokens
        new = last.argmax(dim=-1, keepdim=True)  # (B, 1)
        step_inputs["input_ids"] = torch.cat([step_inputs["input_ids"], new], dim=1)
        step_inputs["attention_mask"] = torch.cat([step_inputs["attention_mask"], torch.ones_like(new)], dim=1)
        if "mm_token_type_ids" in step_inputs:
            step_inputs["mm_token_type_ids"] = torch.cat([step_inputs["mm_token_type_ids"], torch.zeros_like(new)],
                                                         dim=1)
    return step_inputs["input_ids"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", list(MAKERS))
def test_keep_all_equals_the_unpruned_model(family, attn):
    model = MAKERS[family](attn_implementation=attn)
    inputs = batch(family, model)
    pruned = fastv(model, 10_000)
    with torch.no_grad():
        expected = model(**inputs).logits
    logits = pruned(**inputs).logits
    for row, mask in enumerate(inputs["attention_mask"].bool()):
        torch.testing.assert_close(logits[row, -int(mask.sum()):], expected[row, mask], rtol=0, atol=1e-5)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))


@pytest.mark.parametrize("family", list(MAKERS))
def test_pruned_prompt_and_generation_equal_the_masked_reference(family):
    model = MAKERS[family](attn_implementation="eager")
    single = batch_of_first_prompt(family, model)
    pruned = fastv(model, 3)
    logits = pruned(**single).logits[0]
    drop = dropped_columns(family, model, single, pruned.last_selection)
    expected = masked_logits(model, single, drop)[0, ~drop[0]]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)

    inputs = batch(family, model)  # left padded, an image and a video in one prompt (Qwen), several sizes
    output = pruned.generate(**inputs, **GREEDY)
    assert [s.kept.numel() for s in pruned.last_selection] == [3] * len(pruned.last_selection)
    drop = dropped_columns(family, model, inputs, pruned.last_selection)
    assert torch.equal(output, greedy_reference(model, inputs, drop, GREEDY["max_new_tokens"]))


def batch_of_first_prompt(family, model):
    if family == "llava_next":
        return llava_next_batch(model, [[7, 8, 9]], NEXT_SIZES[:1])
    return qwen_batch(model, [[7, 8, 9]], QWEN_VISUALS[:1])


@pytest.mark.parametrize("family", list(MAKERS))
def test_selection_is_the_top_attention_of_the_last_token_and_later_layers_cache_only_kept_tokens(family):
    model = MAKERS[family](attn_implementation="eager")
    inputs = batch(family, model)
    with torch.no_grad():
        attention = model(**inputs, output_attentions=True).attentions[K - 1].mean(dim=1)[:, -1]  # (B, L)
    pruned = fastv(model, 3)
    output = pruned(**inputs, use_cache=True)
    for selection, columns in zip(pruned.last_selection, entry_columns(family, model, inputs)):
        top = attention[selection.sample, columns].topk(3).indices
        assert selection.kept.tolist() == sorted(top.tolist())
    length = inputs["input_ids"].shape[1]
    real = inputs["attention_mask"].sum(dim=1)
    dropped = dropped_columns(family, model, inputs, pruned.last_selection).sum(dim=1)
    assert [layer.keys.shape[-2] for layer in output.past_key_values.layers] == [length, int((real - dropped).max())]


def test_llava_next_policies_and_newlines():
    model = tiny_llava_next(attn_implementation="sdpa")
    inputs = batch("llava_next", model)
    per_tile = fastv(model, 9, adapter={"name": "llava_next", "budget_policy": "per_tile"})
    per_tile(**inputs)
    views = {}
    for selection in per_tile.last_selection:
        views.setdefault((selection.sample, selection.image), []).append(selection.kept.numel())
    assert views == {(0, 0): [3, 3, 3], (1, 0): [2, 2, 2, 2, 1], (1, 1): [3, 3, 3]}  # 9 per image, split evenly
    # newline tokens: all kept (the default) or all dropped, never ranked; each row holds text + 4 per image
    scored = [0, 0]
    for columns, row in zip(entry_columns("llava_next", model, inputs), [0, 1, 1]):
        scored[row] += columns.numel()
    real = inputs["attention_mask"].sum(dim=1)
    placeholders = (inputs["input_ids"] == IMAGE_TOKEN_ID).sum(dim=1)
    for newlines, expected in (("keep", real - torch.tensor(scored) + torch.tensor([4, 8])),
                               ("drop", real - placeholders + torch.tensor([4, 8]))):
        pruned = fastv(model, 4, adapter={"name": "llava_next", "newlines": newlines})
        cache = pruned(**inputs, use_cache=True).past_key_values.layers[K].keys
        assert cache.shape[-2] == int(expected.max())
    assert bool((placeholders > torch.tensor(scored)).all())  # there are newline tokens to keep or drop


def test_qwen_video_per_frame_splits_the_budget_between_slices():
    model = tiny_qwen2_vl(attn_implementation="sdpa")
    inputs = batch("qwen2_vl", model)
    pruned = fastv(model, 5, adapter={"name": "qwen2_vl", "video_policy": "per_frame"})
    output = pruned.generate(**inputs, **GREEDY)
    assert output.shape == (2, inputs["input_ids"].shape[1] + GREEDY["max_new_tokens"])
    assert [(s.sample, s.image, s.kept.numel()) for s in pruned.last_selection] == [
        (0, 0, 5), (1, 0, 4), (1, 1, 3), (1, 1, 2)]
