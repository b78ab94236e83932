"""[CLS] attention: the adapter's row equals eager attention's weights at the feature layer, without switching the
user's model off SDPA, and the scorer ranks by it."""

import pytest
import torch

import zoprune
from zoprune.errors import InputError
from zoprune_plugins.adapters.vision_attention import cls_attention
from tiny_models import llava_batch, tiny_llava, tokens_per_image


def eager_cls_row(model, pixel_values, feature_layer=-2):
    """What VisionZip reads: attentions of the layer producing hidden_states[feature_layer], row [CLS], patches."""
    eager = tiny_llava(attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = eager.model.vision_tower(pixel_values, output_attentions=True, output_hidden_states=True)
    layer = feature_layer % len(out.hidden_states) - 1
    return out.attentions[layer][:, :, 0, 1:].mean(dim=1)  # (I, N)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_adapter_row_equals_eager_attention(attn):
    model = tiny_llava(attn_implementation=attn)
    inputs = llava_batch(model, [[6, 7], [8]], [2, 1])
    pruned = zoprune.prune(model, {"scorer": "cls_attention", "selector": "topk", "budget": 4})
    images = pruned.adapter.extract(inputs, pruned._projector(torch.float32), torch.float32,
                                    frozenset({"cls_attention"}))
    got = torch.stack([t.extras["cls_attention"] for t in images])
    expected = eager_cls_row(model, inputs["pixel_values"])
    assert got.shape == (3, tokens_per_image(model))
    assert torch.allclose(got, expected, atol=1e-6)
    assert model.config.vision_config._attn_implementation == attn  # the user's model was not switched


def test_other_feature_layers_and_full_strategy():
    model = tiny_llava()
    inputs = llava_batch(model, [[6]], [1])
    pruned = zoprune.prune(model, {"scorer": "cls_attention", "selector": "topk", "budget": 4})
    with torch.no_grad():
        outputs = pruned.adapter.vision_outputs(inputs)
        last = pruned.adapter.cls_attention({**inputs, "vision_feature_layer": -1}, outputs)
        full = pruned.adapter.cls_attention({**inputs, "vision_feature_select_strategy": "full"}, outputs)
    assert torch.allclose(last, eager_cls_row(model, inputs["pixel_values"], -1), atol=1e-6)
    assert full.shape == (1, tokens_per_image(model) + 1)  # 'full' keeps [CLS] among the tokens
    assert torch.allclose(full.sum(dim=-1), torch.ones(1), atol=1e-5)  # the whole softmax row
    with pytest.raises(InputError, match="embeddings"):
        pruned.adapter.cls_attention({**inputs, "vision_feature_layer": 0}, outputs)


def test_half_precision_row_is_a_float32_softmax():
    model = tiny_llava()
    layer = model.model.vision_tower.encoder.layers[1]
    hidden = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = cls_attention(layer, hidden)
        layer = layer.to(torch.bfloat16)
        half = cls_attention(layer, hidden.to(torch.bfloat16))
        # the bf16 layer's own query and key projections, their product taken to float32 before the softmax
        attn, x = layer.self_attn, layer.layer_norm1(hidden.to(torch.bfloat16))
        query = attn.q_proj(x[:, :1]).view(2, 1, -1, attn.head_dim).transpose(1, 2)  # (B, H, 1, hd)
        keys = attn.k_proj(x).view(2, 17, -1, attn.head_dim).transpose(1, 2)  # (B, H, T, hd)
        product = query @ keys.transpose(-1, -2)  # (B, H, 1, T) bf16
        in_float32 = (product.float() * attn.scale).softmax(dim=-1)[:, :, 0].mean(dim=1)
        in_bfloat16 = (product * attn.scale).softmax(dim=-1)[:, :, 0].mean(dim=1).float()
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, in_float32, rtol=0, atol=1e-7)
    # against the float32 model: measured 8.6e-5 here, where a bf16 softmax would be 3.5e-4 off
    assert (half - full).abs().max() < 2.5e-4 < (in_bfloat16 - full).abs().max()


def test_topk_keeps_the_most_attended_patches_and_generates():
    model = tiny_llava(attn_implementation="sdpa")
    inputs = llava_batch(model, [[6, 7, 8]], [1])
    pruned = zoprune.prune(model, {"scorer": "cls_attention", "selector": "topk", "budget": 5})
    out = pruned.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    row = eager_cls_row(model, inputs["pixel_values"])[0]
    assert pruned.last_selection[0].kept.tolist() == sorted(torch.topk(row, 5).indices.tolist())


def test_keep_all_is_still_exact_when_the_signal_is_asked_for():
    model = tiny_llava(attn_implementation="sdpa")
    inputs = llava_batch(model, [[6, 7], [8, 9, 10]], [1, 2])
    pruned = zoprune.prune(model, {"scorer": "cls_attention", "selector": "topk", "budget": tokens_per_image(model)})
    with torch.no_grad():
        assert torch.equal(pruned(**inputs).logits, model(**inputs).logits)
