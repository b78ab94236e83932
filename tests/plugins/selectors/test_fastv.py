"""FastV: pruning inside the language model (LLaVA adapter, Llama LM of the tiny LLaVA: 3 decoder layers, K = 2)."""

import pytest
import torch

import zoprune
from zoprune.errors import ConfigError, InputError, UnsupportedModelError
from tiny_models import IMAGE_TOKEN_ID, llava_batch, tiny_llava, tokens_per_image

GREEDY = {"max_new_tokens": 5, "do_sample": False}
BATCHES = [
    ([[6, 7, 8, 9, 19]], [1]),  # one prompt, one image
    ([[6, 7, 8, 9, 10, 19], [6, 19]], [1, 1]),  # left padded
    ([[6, 7, 8, 9], [6, 19], [7]], [2, 0, 1]),  # different numbers of images per prompt, one without
]


def fastv(model, budget, **params):
    return zoprune.prune(model, scorer=None, selector={"name": "fastv", **params}, budget=budget)


@pytest.fixture(scope="module")
def models():
    return {attn: tiny_llava(attn_implementation=attn) for attn in ("eager", "sdpa")}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("prompts, images", BATCHES)
def test_keep_all_equals_the_unpruned_model(models, prompts, images, attn):
    model = models[attn]
    inputs = llava_batch(model, prompts, images)
    pruned = fastv(model, tokens_per_image(model))
    with torch.no_grad():
        expected = model(**inputs).logits
    logits = pruned(**inputs).logits
    # the pruned sequence drops the padding every row does not need: compare each row's real tokens
    for row, mask in enumerate(inputs["attention_mask"].bool()):
        real = int(mask.sum())
        torch.testing.assert_close(logits[row, -real:], expected[row, mask], rtol=0, atol=1e-5)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))
    assert [s.kept.numel() for s in pruned.last_selection] == [tokens_per_image(model)] * sum(images)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_layers_from_k_cache_only_the_kept_tokens(models, attn):
    model = models[attn]
    prompts, images = BATCHES[2]
    inputs = llava_batch(model, prompts, images)
    n, budget = tokens_per_image(model), 4
    pruned = fastv(model, budget)
    output = pruned(**inputs, use_cache=True, output_hidden_states=True)
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True)
    length = inputs["input_ids"].shape[1]
    real = inputs["attention_mask"].sum(dim=1)
    width = int((real - torch.tensor(images) * (n - budget)).max())
    assert [layer.keys.shape[-2] for layer in output.past_key_values.layers] == [length, length, width]
    assert [s.kept.numel() for s in pruned.last_selection] == [budget] * sum(images)
    # layers 0..K-1 see every token: their hidden states are the unpruned model's, exactly
    for ours, theirs in zip(output.hidden_states[:3], expected.hidden_states[:3]):
        assert torch.equal(ours, theirs)
    assert output.hidden_states[3].shape[1] == width


def reference_logits(model, inputs, keep, k):
    """A single prompt run layer by layer, dropped image tokens masked out as keys from layer k on (FastV's
    original "attention mask" form), every token at its original position."""
    lm = model.model.language_model
    embeds = model.model(**inputs, output_hidden_states=True).hidden_states[0]
    length = embeds.shape[1]
    positions = torch.arange(length)[None]
    rope = lm.rotary_emb(embeds, position_ids=positions)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    masks = [causal, causal & (keep[None, :] | torch.eye(length, dtype=torch.bool))]
    masks = [torch.where(m, 0.0, torch.finfo(embeds.dtype).min)[None, None] for m in masks]
    hidden = embeds
    for index, layer in enumerate(lm.layers):
        hidden = layer(hidden, attention_mask=masks[index >= k], position_embeddings=rope, position_ids=positions)
    return model.lm_head(lm.norm(hidden))[0, keep]


@pytest.mark.parametrize("query", ["last", "text"])
def test_pruned_forward_equals_masking_the_dropped_tokens(models, query):
    model = models["eager"]
    inputs = llava_batch(model, [[6, 7, 8, 9, 19]], [1])
    pruned = fastv(model, 5, query=query)
    logits = pruned(**inputs).logits[0]
    (selection,) = pruned.last_selection
    ids = inputs["input_ids"][0]
    keep = ids != IMAGE_TOKEN_ID
    keep[(ids == IMAGE_TOKEN_ID).nonzero().squeeze(-1)[selection.kept]] = True
    with torch.no_grad():
        expected = reference_logits(model, inputs, keep, k=2)
    assert logits.shape == (int(keep.sum()), model.config.text_config.vocab_size)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_attention_signal_equals_eager_attention_and_ranks_the_selection(models):
    """The row computed from q/k projections (model on SDPA) is eager attention's row of layer K-1."""
    inputs = llava_batch(models["sdpa"], [[6, 7, 8, 9, 10, 19], [6, 19]], [1, 2])
    with torch.no_grad():
        attentions = models["eager"](**inputs, output_attentions=True).attentions[1].mean(dim=1)  # (B, L, L)
    pruned = fastv(models["sdpa"], 3)
    captured = []
    adapter = pruned.adapter

    def select(images):
        captured.extend(images)
        return [s.kept for s in pruned._select(images)]

    with torch.no_grad(), adapter.inside_llm(inputs, 2, select, torch.float32):
        models["sdpa"](**inputs)
    assert [(t.sample, t.image) for t in captured] == [(0, 0), (1, 0), (1, 1)]
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    n = tokens_per_image(models["sdpa"])
    for tokens in captured:
        columns = (ids[tokens.sample] == IMAGE_TOKEN_ID).nonzero().squeeze(-1)[tokens.image * n:(tokens.image + 1) * n]
        last = attentions[tokens.sample, -1, columns]
        text = mask[tokens.sample] & (ids[tokens.sample] != IMAGE_TOKEN_ID)
        mean_text = attentions[tokens.sample][text][:, columns].mean(dim=0)
        torch.testing.assert_close(tokens.extras["llm_attention"], last, rtol=0, atol=1e-6)
        torch.testing.assert_close(tokens.extras["llm_attention_text"], mean_text, rtol=0, atol=1e-6)
        assert tokens.extras["llm_attention"].std() > 0  # a real signal, not a constant
    pruned.select(**inputs)
    for tokens, selection in zip(captured, pruned.last_selection):
        top = torch.sort(tokens.extras["llm_attention"], descending=True, stable=True).indices[:3]
        assert selection.kept.tolist() == sorted(top.tolist())


def test_generate_runs_to_length_with_beams(models):
    model = models["sdpa"]
    inputs = llava_batch(model, [[6, 7, 8, 9, 10, 19], [6]], [1, 2])
    length = inputs["input_ids"].shape[1]
    output = fastv(model, 4).generate(**inputs, max_new_tokens=7, do_sample=False)
    assert output.shape == (2, length + 7)
    assert torch.equal(output[:, :length], inputs["input_ids"])
    beams = {"max_new_tokens": 4, "num_beams": 2, "num_return_sequences": 2, "do_sample": False}
    assert torch.equal(fastv(model, tokens_per_image(model)).generate(**inputs, **beams),
                       model.generate(**inputs, **beams))
    assert fastv(model, 4).generate(**inputs, **beams).shape == (4, length + 4)


def test_pruning_changes_the_output(models):
    model = models["eager"]
    inputs = llava_batch(model, [[6, 7, 8]], [1])
    with torch.no_grad():
        expected = model(**inputs).logits[0, -1]
    assert not torch.allclose(fastv(model, 2)(**inputs).logits[0, -1], expected, atol=1e-4)


def test_errors(models):
    model = models["eager"]
    inputs = llava_batch(model, [[6, 7]], [1])
    with pytest.raises(ConfigError, match="scorer: null"):
        zoprune.prune(model, selector="fastv", budget=4)
    with pytest.raises(ConfigError, match="selector.layer"):
        fastv(model, 4, layer=0)
    with pytest.raises(InputError, match="layer 3 is outside"):
        fastv(model, 4, layer=3)(**inputs)
    flash = tiny_llava(attn_implementation="sdpa")
    flash.model.language_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModelError, match="eager or sdpa"):
        fastv(flash, 4)(**inputs)
    with pytest.raises(UnsupportedModelError, match="cannot prune inside the language model"):
        zoprune.ModelAdapter.inside_llm(zoprune.prune(model, budget=4).adapter, inputs, 2, None, torch.float32)


def test_pruned_generate_equals_greedy_decoding_of_the_masked_reference(models):
    model = models["sdpa"]
    inputs = llava_batch(model, [[6, 7, 8, 9, 19]], [1])
    pruned = fastv(model, 5)
    output = pruned.generate(**inputs, **GREEDY)
    ids = inputs["input_ids"][0]
    keep = ids != IMAGE_TOKEN_ID
    keep[(ids == IMAGE_TOKEN_ID).nonzero().squeeze(-1)[pruned.last_selection[0].kept]] = True
    sequence = inputs["input_ids"]
    with torch.no_grad():
        for _ in range(GREEDY["max_new_tokens"]):
            step = {**inputs, "input_ids": sequence, "attention_mask": torch.ones_like(sequence)}
            logits = reference_logits(models["eager"], step, torch.cat([keep, torch.ones(
                sequence.shape[1] - ids.shape[0], dtype=torch.bool)]), k=2)
            sequence = torch.cat([sequence, logits[-1].argmax()[None, None]], dim=1)
    assert torch.equal(output, sequence)


def test_a_batch_prunes_each_prompt_as_alone(models):
    """Left padding and different kept lengths per row must not change any prompt's selection or generation."""
    model = models["sdpa"]
    prompts, images = BATCHES[2]
    inputs = llava_batch(model, prompts, images)
    batch = fastv(model, 3)
    output = batch.generate(**inputs, **GREEDY)
    selections = [s.kept.tolist() for s in batch.last_selection]
    alone, kept = [], []
    first_image = 0
    for row, count in enumerate(images):
        real = inputs["attention_mask"][row].bool()
        single_inputs = {"input_ids": inputs["input_ids"][row, real][None],
                         "attention_mask": torch.ones(1, int(real.sum()), dtype=torch.long)}
        if count:
            single_inputs["pixel_values"] = inputs["pixel_values"][first_image:first_image + count]
        first_image += count
        single = fastv(model, 3)
        alone.append(single.generate(**single_inputs, **GREEDY)[0, -GREEDY["max_new_tokens"]:])
        kept += [s.kept.tolist() for s in single.last_selection]
    assert selections == kept
    assert torch.equal(output[:, -GREEDY["max_new_tokens"]:], torch.stack(alone))


@pytest.mark.parametrize("query", ["last", "text"])
def test_each_query_keeps_the_top_k_of_its_own_eager_attention(models, query):
    """The kept tokens are computed here from eager attention maps of layer K-1, on prompts where the last token's
    ranking and the mean text ranking disagree, so ranking by the wrong query cannot pass."""
    k = 4
    inputs = llava_batch(models["sdpa"], [[6, 7, 8, 9, 10, 19], [7, 19]], [1, 2])
    with torch.no_grad():
        attentions = models["eager"](**inputs, output_attentions=True).attentions[1].mean(dim=1)  # (B, L, L)
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    n = tokens_per_image(models["sdpa"])
    expected, disagree = {}, 0
    for sample, count in enumerate([1, 2]):
        text = mask[sample] & (ids[sample] != IMAGE_TOKEN_ID)  # every real token that is not an image's
        for image in range(count):
            columns = (ids[sample] == IMAGE_TOKEN_ID).nonzero().squeeze(-1)[image * n:(image + 1) * n]
            rows = {"last": attentions[sample, -1, columns], "text": attentions[sample][text][:, columns].mean(dim=0)}
            top = {}
            for name, row in rows.items():
                values = torch.sort(row, descending=True).values
                # no near-tie at the cut (the smallest gap here is 1.5e-5; the adapter's rows differ from eager
                # attention by 4e-9): the reference selection is unambiguous
                assert values[k - 1] - values[k] > 4e-8
                top[name] = sorted(torch.topk(row, k).indices.tolist())
            disagree += top["last"] != top["text"]
            expected[(sample, image)] = top[query]
    assert disagree == 3  # on every image the two queries keep different tokens
    pruned = fastv(models["sdpa"], k, query=query)
    selections = pruned.select(**inputs)
    assert {(s.sample, s.image): s.kept.tolist() for s in selections} == expected
