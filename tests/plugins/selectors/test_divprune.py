"""DivPrune equals the official algorithm (vbdi/divprune ``DivPrune``), written out here as it is there: with the
full N x N cosine-distance matrix."""

import pytest
import torch

import zoprune
from zoprune import Context, ImageTokens
from zoprune_plugins.selection import geometry as divprune
from zoprune_plugins.selection.geometry import most_isolated, nearest_neighbour_distance
from zoprune_plugins.selectors.divprune import DivPrune, DivPruneConfig, divprune_select
from tiny_models import llava_batch, tiny_llava


def reference(z, k):
    """The official logic: D = 1 - cos (N x N); first pick = argmax over columns of the second smallest entry
    (the nearest other token); then argmax over columns of the minimum over the picked rows. Not masked."""
    zn = z / z.norm(dim=1, keepdim=True)
    distance = 1.0 - zn @ zn.T
    picks = []
    for i in range(k):
        if i == 0:
            scores = torch.topk(distance, 2, dim=0, largest=False).values[1, :]
        else:
            scores = torch.min(distance[torch.tensor(picks)], dim=0).values
        picks.append(int(torch.argmax(scores)))
    return sorted(picks)


def clustered(n, d, clusters, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, d, generator=g) * 3
    return centers[torch.randint(clusters, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("n, k, kind", [(30, 5, "random"), (64, 16, "random"), (200, 64, "random"),
                                        (64, 16, "clustered"), (150, 40, "clustered"), (10, 9, "random"),
                                        (576, 64, "clustered"), (2, 1, "random")])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_equals_reference(n, k, kind, chunk):
    g = torch.Generator().manual_seed(n + k)
    z = torch.randn(n, 24, generator=g) if kind == "random" else clustered(n, 24, 6, n)
    expected = reference(z, k)
    assert len(set(expected)) == k  # the reference picked distinct tokens, so the two must agree exactly
    assert divprune_select(z, k, chunk).tolist() == expected


def test_first_pick_is_the_most_isolated_token():
    z = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99], [-1.0, -1.0]])
    assert divprune_select(z, 1).tolist() == [4]
    nn = nearest_neighbour_distance(torch.nn.functional.normalize(z, dim=-1), chunk=2)
    zn = torch.nn.functional.normalize(z, dim=-1)
    full = 1 - zn @ zn.T
    assert torch.allclose(nn, (full + 10 * torch.eye(5)).min(dim=0).values, atol=1e-6)


def vlm_like(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(12, d, generator=g)
    z = torch.randn(d, generator=g) + centers[torch.randint(12, (n,), generator=g)] + 0.7 * torch.randn(n, d,
                                                                                                       generator=g)
    return z * torch.exp(0.3 * torch.randn(n, 1, generator=g))


@pytest.mark.parametrize("kind, n, d, sample, batch", [
    ("vlm", 3000, 64, 64, 16), ("vlm", 1500, 32, 8, 4), ("gaussian", 2000, 32, 64, 16),
    ("clustered", 1200, 24, 32, 8), ("gaussian", 300, 16, 2, 1)])
def test_most_isolated_is_the_argmax_of_every_nearest_neighbour_distance(kind, n, d, sample, batch):
    z = {"vlm": lambda: vlm_like(n, d, n), "gaussian": lambda: torch.randn(n, d, generator=torch.Generator()
                                                                           .manual_seed(n)),
         "clustered": lambda: clustered(n, d, 6, n)}[kind]()
    assert most_isolated(z, chunk=100, sample=sample, batch=batch) == int(torch.argmax(
        nearest_neighbour_distance(z, chunk=100)))


def test_most_isolated_ties_go_to_the_lower_index():
    # 12 orthogonal directions, each at distance 1 from every other: all tie; the sample path must still say 0
    z = torch.eye(12) * torch.arange(1, 13)[:, None]
    assert most_isolated(z, sample=2, batch=3) == 0
    # a tie decided in a later batch: tokens 1 (e0) and 2 (e1) are both at distance 1 from everything near them;
    # the sampled rows (0, 3, 6, 9) lie near -e1, so token 2's bound (~2) puts it first and token 1 (bound 1) after
    near = torch.tensor([[0.0, -1.0, 0.01 * i, 0.02 * (i % 3)] for i in range(8)])
    z = torch.cat([near[:1], torch.eye(4)[:2], near[1:]])  # (10, 4)
    assert int(torch.argmax(nearest_neighbour_distance(z))) == 1
    assert most_isolated(z, sample=4, batch=1) == 1


def test_bounds_spare_most_tokens_on_structured_data(monkeypatch):
    computed = []
    exact = divprune.nearest_neighbour_distance

    def spy(z, chunk=1024, columns=None):
        computed.append(z.shape[0] if columns is None else columns.shape[0])
        return exact(z, chunk, columns)

    monkeypatch.setattr(divprune, "nearest_neighbour_distance", spy)
    z = vlm_like(4000, 64, 1)
    first = most_isolated(z, sample=256, batch=32)
    assert sum(computed) <= 4000 // 10  # at most a tenth of the columns computed exactly
    monkeypatch.undo()
    assert first == int(torch.argmax(nearest_neighbour_distance(z)))


def test_duplicates_still_give_k_distinct_tokens():
    # 3 distinct directions, each repeated: after 3 picks only zero-distance tokens remain. The official code may
    # pick a kept token again there; ours masks kept tokens, so it always returns k distinct ones.
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    z = base.repeat(4, 1)
    kept = divprune_select(z, 6)
    assert len(set(kept.tolist())) == 6
    assert {int(i) % 3 for i in kept[:6]} == {0, 1, 2}


def test_large_image_with_small_chunks():
    # 2000 tokens with chunk 64: the first pick sees 2000 x 64 blocks only, and still agrees with the full matrix
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 16, generator=g)
    kept = DivPrune(DivPruneConfig(chunk=64)).select(None, ImageTokens(
        features=z, embeddings=z, model_embeddings=z, projector=lambda x: x, sample=0, image=0), 32,
        Context(torch.Generator()))
    assert kept.tolist() == reference(z, 32)


def test_runs_through_prune():
    model = tiny_llava()
    inputs = llava_batch(model, [[6, 7, 8], [6]], [1, 2])
    pruned = zoprune.prune(model, {"scorer": None, "selector": "divprune", "budget": 5})
    out = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    extracted = pruned.adapter.extract(inputs, pruned._projector(torch.float32), torch.float32)
    assert [s.kept.tolist() for s in pruned.last_selection] == [reference(t.embeddings, 5) for t in extracted]
