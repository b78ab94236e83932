"""coverage_select (lazy, hot set, O(N) state) picks exactly what the plain one-pass-per-pick loop picks."""

import pytest
import torch
from zoprune_plugins.selection import greedy as cov
from zoprune_plugins.selection.geometry import minmax
from zoprune_plugins.selection.greedy import greedy_max_cosine
from zoprune_plugins.selectors.coverage import (
    coverage_select,
    coverage_select_dense,
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


def test_lazy_updates_compute_far_fewer_cosines_than_the_dense_loop(monkeypatch):
    n, k = 4000, 400
    z = vlm_like(n, 64, 0)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0))
    caught_up = []  # cosines computed to bring cold tokens up to date
    original = cov._catch_up

    def counting(index, normalised, t, kept_rows, max_cos, seen):
        caught_up.append(int((t - seen[index]).sum()))
        return original(index, normalised, t, kept_rows, max_cos, seen)

    monkeypatch.setattr(cov, "_catch_up", counting)
    kept = coverage_select(scores, z, k)
    hot_updates = 256 * (k - 1)  # the default hot set, brought up to date after every pick
    assert sum(caught_up) + hot_updates < n * k / 3  # the dense loop computes n cosines per pick
    assert torch.equal(kept, coverage_select_dense(scores, z, k))


def test_leaves_the_thread_setting_alone(monkeypatch):
    # the selection must not switch torch's (process-wide) thread count, not even while it runs
    torch.set_num_threads(2)  # the autouse fixture restores the previous setting
    during = []
    original = cov._catch_up

    def recording(*args):
        during.append(torch.get_num_threads())
        return original(*args)

    monkeypatch.setattr(cov, "_catch_up", recording)
    coverage_select(torch.rand(3000, generator=torch.Generator().manual_seed(1)), vlm_like(3000, 32, 1), 300)
    assert during and set(during) == {2}
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("hot, promote", [(2, 1), (3, 2), (16, 15), (64, 8)])
def test_hot_set_size_does_not_change_the_picks(hot, promote):
    # tiny hot sets force many evictions and promotions; the picks stay those of the dense loop
    z = vlm_like(700, 48, 5)
    s = minmax(torch.rand(700, generator=torch.Generator().manual_seed(5)))
    expected = coverage_select_dense(s, z, 120)
    assert torch.equal(greedy_max_cosine(s, z, 120, int(torch.argmax(s)), hot=hot, promote=promote), expected)


def test_exact_ties_across_hot_and_cold_tokens_go_to_the_lower_index():
    # weights of 0: every gain is 0 under the product, so the greedy takes the lowest indices in order; and
    # 48 copies of 4 directions with the sum fusion: ties among copies, across evictions from a small hot set
    z = vlm_like(300, 16, 6)
    assert torch.equal(greedy_max_cosine(torch.zeros(300), z, 40, 0), torch.arange(40))
    copies = torch.eye(4).repeat(48, 1)
    ones = torch.ones(192)
    for hot, promote in [(4, 3), (8, 2), (256, 64)]:
        picks = greedy_max_cosine(ones, copies, 12, 0, "sum", hot=hot, promote=promote)
        assert torch.equal(picks, coverage_select_dense(ones, copies, 12, "sum"))


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
