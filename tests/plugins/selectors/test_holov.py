"""HoloV: the budget of an image split over crops by saliency x similarity variance, then the top tokens of each crop.

``reference`` is the authors' rule (obananas/HoloV, ``HoloV()`` in ``llava/model/utils.py``) written out here from
its description: per crop a loop with the whole similarity matrix, floor of the weights times K, the leftover tokens
one each to the largest weights, top-k by attention in each crop, zero padding when a crop cannot take its share.
"""

import pytest
import torch

import zoprune
from zoprune import Context, ImageTokens
from zoprune.errors import ConfigError
from zoprune_plugins.selectors.holov import HoloV, HoloVConfig, allocate, region_ids, region_scores
from tiny_models import llava_batch, tiny_llava


def reference(x, attention, crops, k):
    """Kept positions (in the authors' output order) and the count of zero rows they pad with."""
    n = x.shape[0]
    size, rest = divmod(n, crops)
    bounds, start = [], 0
    for p in range(crops):
        length = size + (1 if p < rest else 0)
        if length > 0:
            bounds.append((start, start + length))
        start += length
    scores = []
    for lo, hi in bounds:
        a = attention[lo:hi]
        m = hi - lo
        if m <= 1:
            scores.append(a.mean())
            continue
        f = x[lo:hi] / (x[lo:hi].norm(dim=1, keepdim=True) + 1e-6)
        s = (f @ f.T) * (1 - torch.eye(m))
        mean = s.sum(dim=1) / (m - 1)
        var = ((s - mean[:, None]) ** 2).sum(dim=1) / (m - 1)
        scaled = a * 1e3
        var_scaled = var * (scaled.abs().mean() / (var.abs().mean() + 1e-6))
        scores.append((1 * scaled + 0.09 * var_scaled).mean())
    scores = torch.stack(scores)
    weights = scores / (scores.sum() + 1e-6)
    alloc = (weights * k).floor().long()
    remaining = k - int(alloc.sum())
    if remaining > 0:
        for i in torch.topk(weights, min(remaining, len(weights))).indices[:remaining]:
            alloc[i] += 1
    kept = []
    for (lo, hi), budget in zip(bounds, alloc.tolist()):
        if budget <= 0:
            continue
        if budget >= hi - lo:
            kept += list(range(lo, hi))
        else:
            kept += (lo + torch.topk(attention[lo:hi], budget).indices).tolist()
    return kept[:k], max(0, k - len(kept))


def clustered(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(8, d, generator=g) * 3
    return centers[torch.randint(8, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


def inputs(n, d, seed, kind):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) if kind == "random" else clustered(n, d, seed)
    attention = torch.softmax(3 * torch.randn(n, generator=g), 0)  # like [CLS] attention: positive, sums to 1
    return x, attention


def select(scores, x, k, grid=None, **config):
    tokens = ImageTokens(features=x, embeddings=x, model_embeddings=x, projector=lambda v: v, sample=0, image=0,
                         grid=grid)
    return HoloV(HoloVConfig(**config)).select(scores, tokens, k, Context(torch.Generator()))


@pytest.mark.parametrize("n, k, kind", [(576, 64, "random"), (576, 64, "clustered"), (576, 16, "clustered"),
                                        (576, 128, "random"), (2880, 160, "clustered"), (100, 20, "random"),
                                        (50, 7, "clustered")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_authors_rule(n, k, kind, seed):
    x, attention = inputs(n, 32, seed, kind)
    expected, padding = reference(x, attention, 16, k)
    ours = select(attention, x, k).tolist()
    if padding == 0:  # the budgets fit every crop: the authors' rule and ours must agree exactly
        assert ours == sorted(expected)
    else:  # a crop overflows: the authors pad with zero rows, we keep every real token they keep and more
        assert len(ours) == k and set(expected) <= set(ours) and len(expected) + padding == k
    if k <= 64 and n >= 576:
        assert padding == 0  # the paper's setting: the exact comparison above ran


def test_where_a_crop_overflows_the_surplus_goes_to_the_others():
    """One crop holds nearly all the attention: the authors' rule pads with zero rows, ours gives the surplus to the
    other crops, keeping every real token the authors keep."""
    x, attention = inputs(160, 16, 3, "random")
    attention[:10] += 1.0  # crop 0 (tokens 0..9) dominates
    k = 40
    expected, padding = reference(x, attention, 16, k)
    assert padding > 0
    ours = select(attention, x, k).tolist()
    assert len(ours) == k and set(expected) <= set(ours)
    assert set(range(10)) <= set(ours)  # the dominant crop is kept whole


@pytest.mark.parametrize("seed", range(40))
def test_budgets_sum_to_k_and_follow_the_weights(seed):
    g = torch.Generator().manual_seed(seed)
    regions = int(torch.randint(1, 30, (1,), generator=g))
    capacity = torch.randint(1, 40, (regions,), generator=g)
    k = int(torch.randint(1, int(capacity.sum()) + 1, (1,), generator=g))
    weights = torch.rand(regions, generator=g) ** 3
    if seed % 4 == 0:
        weights[torch.rand(regions, generator=g) < 0.3] = 0.0
    budget = allocate(weights, capacity, k)
    assert int(budget.sum()) == k
    assert bool((budget >= 0).all()) and bool((budget <= capacity).all())
    for a in range(regions):
        for b in range(regions):
            if weights[a] > weights[b]:  # a higher-weighted crop gets at least as many, unless it is kept whole
                assert budget[a] >= budget[b] or budget[a] == capacity[a], (a, b, budget, weights, capacity)


def test_a_crop_with_more_saliency_and_variety_gets_more_tokens():
    x, attention = inputs(576, 32, 5, "clustered")
    region = region_ids(576, 16)
    weights = region_scores(attention, x, region)
    kept = select(attention, x, 64)
    per_crop = torch.bincount(region[kept], minlength=16)
    order = torch.argsort(weights, descending=True)
    assert per_crop[order[0]] >= per_crop[order[-1]] + 1
    assert all(per_crop[order[i]] >= per_crop[order[i + 1]] for i in range(15))  # no crop is full here


def test_tiles_are_rectangles_of_the_grid():
    region = region_ids(576, 16, "tiles", (24, 24))
    assert region.reshape(24, 24)[:6, :6].unique().tolist() == [0]
    assert region.reshape(24, 24)[18:, 18:].unique().tolist() == [15]
    assert torch.bincount(region).tolist() == [36] * 16
    assert torch.equal(region_ids(576, 16, "tiles", None), region_ids(576, 16))  # no grid: chunks


def test_auto_crops_follow_the_authors_qwen_rule():
    assert HoloVConfig(crops="auto").crops_for(576, 64) == 16
    assert HoloVConfig(crops="auto").crops_for(576, 16) == 64
    assert HoloVConfig(crops=16).crops_for(10, 2) == 10  # never more crops than tokens


def test_any_scorer_works_even_negative_scores():
    x, _ = inputs(144, 8, 1, "random")
    scores = torch.randn(144, generator=torch.Generator().manual_seed(4))  # below 0 too: shifted to start at 0
    kept = select(scores, x, 20)
    assert kept.numel() == 20 and bool((kept[1:] > kept[:-1]).all())


@pytest.mark.parametrize("method", ["holov", "zo_sensitivity+holov", "norm+holov"])
def test_methods_generate_on_llava(method):
    from zoprune.methods import resolve_method

    model = tiny_llava()
    _, config = resolve_method(method)
    if method == "holov":
        assert config.scorer.name == "cls_attention" and config.selector.name == "holov"
    pruned = zoprune.prune(model, config, budget=5)
    batch = llava_batch(model, [[6, 7], [9]], [1, 2])
    out = pruned.generate(**batch, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 2
    assert [s.num_kept for s in pruned.last_selection] == [5, 5, 5]


def test_crops_must_be_positive():
    with pytest.raises(ConfigError):
        zoprune.PipelineConfig.from_dict({"selector": {"name": "holov", "crops": 0}})
