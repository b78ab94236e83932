"""coverage_select (lazy, O(N) state) picks exactly what the plain one-pass-per-pick loop picks, at larger N."""

import pytest
import torch
from zoprune_plugins.selectors import coverage as cov
from zoprune_plugins.selectors.coverage import (
    coverage_select,
    coverage_select_dense,
    greedy_max_cosine,
)


@pytest.fixture(autouse=True)
def one_thread():
    # the reference loop is thousands of tiny ops: on shared cores, thread synchronisation would dominate
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def vlm_like(n, d, seed, clusters=16):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=g)
    centers = torch.randn(clusters, d, generator=g)
    z = mean + centers[torch.randint(clusters, (n,), generator=g)] + 0.7 * torch.randn(n, d, generator=g)
    return z * torch.exp(0.3 * torch.randn(n, 1, generator=g))


@pytest.mark.parametrize("fusion", ["product", "sum"])
@pytest.mark.parametrize("kind, n, d, k", [("gaussian", 2000, 64, 200), ("vlm", 2000, 64, 200),
                                           ("vlm", 600, 256, 300), ("gaussian", 300, 16, 299)])
def test_same_picks_as_the_dense_loop(kind, n, d, k, fusion):
    g = torch.Generator().manual_seed(n + d)
    z = torch.randn(n, d, generator=g) if kind == "gaussian" else vlm_like(n, d, n)
    scores = torch.rand(n, generator=g)
    lazy = coverage_select(scores, z, k, fusion)
    assert torch.equal(lazy, coverage_select_dense(scores, z, k, fusion))
    assert lazy.shape == (k,) and bool((lazy[1:] > lazy[:-1]).all())


def test_ties_go_to_the_lower_index_as_with_argmax():
    # equal scores and four exact copies of each of 8 orthogonal directions: many exact ties in gain
    base = torch.eye(8).repeat(4, 1) * 2.0
    scores = torch.ones(32)
    assert torch.equal(coverage_select(scores, base, 8), coverage_select_dense(scores, base, 8))
    assert torch.equal(coverage_select(scores, base, 8), torch.arange(8))


def test_lazy_updates_touch_far_fewer_tokens_than_the_dense_loop(monkeypatch):
    n, k = 4000, 400
    z = vlm_like(n, 64, 0)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0))
    touched = []
    original = cov._refresh

    def counting(stale, *args):
        touched.append(stale.numel())
        return original(stale, *args)

    monkeypatch.setattr(cov, "_refresh", counting)
    coverage_select(scores, z, k)
    assert sum(touched) < n * k / 20  # the dense loop touches n tokens per pick


def test_input_is_not_modified_and_any_float_dtype_works():
    z = vlm_like(800, 32, 3)
    scores = torch.rand(800, generator=torch.Generator().manual_seed(3))
    before = z.clone()
    kept = coverage_select(scores, z, 80)
    assert torch.equal(z, before)
    half = coverage_select(scores, z.to(torch.bfloat16), 80)
    assert half.shape == (80,) and half.dtype == torch.long
    assert len(set(half.tolist()) & set(kept.tolist())) > 60  # rounding the inputs moves a few picks, not most


def test_greedy_with_uniform_scores_is_max_min_diversity():
    z = vlm_like(500, 16, 4)
    kept = greedy_max_cosine(torch.ones(500), z, 50, first=7)
    zn = torch.nn.functional.normalize(z, dim=-1)
    picks, max_cos = [7], zn @ zn[7]
    for _ in range(49):
        gain = (1 - max_cos).masked_fill(torch.isin(torch.arange(500), torch.tensor(picks)), -float("inf"))
        picks.append(int(gain.argmax()))
        max_cos = torch.maximum(max_cos, zn @ zn[picks[-1]])
    assert torch.equal(kept, torch.tensor(sorted(picks)))
