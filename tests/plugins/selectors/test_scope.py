"""SCOPE equals the official loop (kinredon/SCOPE ``SCOPE`` in ``scope/clip_encoder.py``), written out here from its
description: the whole N x N cosine matrix, every gain recomputed per pick."""

import pytest
import torch

import zoprune
from zoprune_plugins.selectors.scope import saliency_weights, scope_select
from tiny_models import llava_batch, tiny_llava


def reference(x, attention, k, alpha=1.0, combine="product"):
    """gain_j = sum_i max(0, C[i, j] - cur_i) with the columns of picked tokens zeroed; score = gain * a^alpha
    (or + a^alpha); argmax over the unpicked; cur = max(cur, C[pick])."""
    xn = x / x.norm(dim=-1, keepdim=True)
    c = xn @ xn.T
    n = x.shape[0]
    picked = torch.zeros(n, dtype=torch.bool)
    cur = torch.zeros(n)
    weight = attention ** alpha
    out = []
    for _ in range(k):
        gains = torch.maximum(torch.zeros(1), c.masked_fill(picked[None, :], 0) - cur[:, None]).sum(dim=0)
        gains = gains * weight if combine == "product" else gains + weight
        best = int(gains.masked_fill(picked, float("-inf")).argmax())
        out.append(best)
        picked[best] = True
        cur = torch.maximum(cur, c[best])
    return sorted(out)


def clustered(n, d, clusters, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, d, generator=g) * 3
    return centers[torch.randint(clusters, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("n, k, kind", [(2, 1, "random"), (30, 5, "random"), (144, 16, "random"),
                                        (144, 64, "clustered"), (576, 64, "clustered"), (300, 299, "random")])
@pytest.mark.parametrize("alpha, combine", [(1.0, "product"), (2.0, "product"), (1.0, "sum")])
@pytest.mark.parametrize("batch", [1, 32])
def test_equals_the_official_loop(n, k, kind, alpha, combine, batch):
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(n, 24, generator=g) if kind == "random" else clustered(n, 24, 6, seed=k)
    attention = torch.rand(n, generator=g)
    got = scope_select(attention, x, k, alpha, combine, batch=batch, block=37)
    assert got.tolist() == reference(x, attention, k, alpha, combine)


def test_with_equal_saliency_it_covers_every_cluster_first():
    g = torch.Generator().manual_seed(3)
    centres = torch.nn.functional.normalize(torch.randn(5, 64, generator=g), dim=-1) * 10
    cluster = torch.arange(200) % 5
    x = centres[cluster] + 0.1 * torch.randn(200, 64, generator=g)
    chosen = scope_select(torch.ones(200), x, 5)
    # five well separated clusters, five picks: one from each (coverage gains nothing from a second in one)
    assert sorted(cluster[chosen].tolist()) == [0, 1, 2, 3, 4]


def test_negative_scores_are_shifted_not_powered():
    assert saliency_weights(torch.tensor([-1.0, 0.0, 1.0]), 2.0).tolist() == [0.0, 1.0, 4.0]
    assert saliency_weights(torch.tensor([0.5, 2.0]), 1.0).tolist() == [0.5, 2.0]


def test_scope_method_prunes_a_llava_batch_to_the_budget():
    model = tiny_llava()
    inputs = llava_batch(model, [[5, 6], [7]], [1, 2])
    pruned = zoprune.prune(model, {"scorer": "cls_attention", "selector": "scope"}, budget=5)
    pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert [s.kept.numel() for s in pruned.last_selection] == [5, 5, 5]
    for s in pruned.last_selection:  # SCOPE's picks on the adapter's features and [CLS] attention
        assert s.kept.tolist() == reference(*_features_and_attention(pruned, inputs, s), 5)


def _features_and_attention(pruned, inputs, selection):
    images = pruned.adapter.extract(inputs, pruned._projector(torch.float32), torch.float32,
                                    frozenset({"cls_attention"}))
    tokens = next(t for t in images if (t.sample, t.image) == (selection.sample, selection.image))
    return tokens.features, tokens.extras["cls_attention"].float()


def test_first_gains_from_the_upper_tiles_equal_the_full_matrix():
    from zoprune_plugins.selectors.scope import first_gains

    z = torch.nn.functional.normalize(torch.randn(100, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    full = (z @ z.T).clamp_min(0).sum(dim=0)
    assert torch.allclose(first_gains(z, block=7), full, atol=1e-4)


def test_bfloat16_rows_select_on_their_device_as_their_float32_values():
    g = torch.Generator().manual_seed(5)
    x = clustered(300, 24, 6, seed=1).to(torch.bfloat16)
    attention = torch.rand(300, generator=g)
    got = scope_select(attention, x, 30)
    assert got.device == x.device and got.dtype == torch.long
    assert got.tolist() == scope_select(attention, x.float(), 30).tolist() == reference(x.float(), attention, 30)
