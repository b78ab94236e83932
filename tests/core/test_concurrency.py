"""One PrunedModel shared by many threads: every request gets exactly what it gets when the requests run one by one
(outputs and selections), with budget twins sharing the score memo and an in-LLM selector's hooks on the shared
model's layers."""

import random
import threading

import pytest
import torch

import zoprune
from tiny_models import llava_batch, tiny_llava

THREADS, PER_THREAD = 8, 25
METHODS = {
    "zoo-prune": {"scorer": {"name": "zo_sensitivity", "directions": 16}},
    "norm+topk": {"scorer": "norm", "selector": "topk"},
    "divprune": {"scorer": None, "selector": "divprune"},
    "random": {"scorer": None, "selector": "random", "seed": 3},
    "visionzip": {"scorer": "cls_attention", "selector": {"name": "visionzip", "contextual": 1}},
    "fastv": {"scorer": None, "selector": "fastv"},  # prunes inside the language model: hooks on shared layers
}
BUDGETS = [2, 5, 9]
KINDS = ["generate", "call", "select"]


@pytest.fixture(scope="module")
def model():
    return tiny_llava(attn_implementation="sdpa")


@pytest.fixture(autouse=True)
def one_op_thread():
    """8 request threads on a few cores: with several intra-op threads each, every op waits for cores (4 min instead
    of 15 s on 2 shared cores); one intra-op thread per request thread, as a server on few cores would run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def input_pool(model):
    """Batches with different images, prompts and numbers of images; each is shared by several requests, so budget
    twins in different threads hit (and race for) the score memo of the same tensors."""
    shapes = [([[6, 7]], [1]), ([[6, 7, 8, 9], [6]], [1, 2]), ([[7, 19]], [2]), ([[6], [8, 9, 10]], [1, 1]),
              ([[9, 10, 11]], [1]), ([[6, 19], [7]], [0, 1])]
    return [llava_batch(model, prompts, images, seed=seed) for seed, (prompts, images) in enumerate(shapes)]


def run(pruned, kind, inputs):
    """One request: its output (or None) and the selection of that call, read as the user would."""
    if kind == "generate":
        output = pruned.generate(**inputs, max_new_tokens=3, do_sample=False)
    elif kind == "call":
        output = pruned(**inputs).logits
    else:
        output = None
        returned = pruned.select(**inputs)
        assert returned is pruned.last_selection
    return output, list(pruned.last_selection)


def same(a, b):
    if a is None or b is None:
        return a is b
    return torch.equal(a, b)


def assert_same_request(got, expected):
    (output, selection), (ref_output, ref_selection) = got, expected
    assert same(output, ref_output)
    assert len(selection) == len(ref_selection)
    for s, r in zip(selection, ref_selection):
        assert (s.sample, s.image, s.num_tokens) == (r.sample, r.image, r.num_tokens)
        assert torch.equal(s.kept, r.kept)
        assert same(s.scores, r.scores) and same(s.merged, r.merged) and same(s.groups, r.groups)


def test_threads_sharing_one_pruned_model_get_the_sequential_results(model):
    pool = input_pool(model)
    rng = random.Random(0)
    requests = [(rng.choice(list(METHODS)), rng.choice(BUDGETS), rng.choice(KINDS), rng.randrange(len(pool)))
                for _ in range(THREADS * PER_THREAD)]

    # one by one, each request on a pipeline of its own
    expected = [run(zoprune.prune(model, METHODS[method], budget=budget), kind, pool[which])
                for method, budget, kind, which in requests]

    # at once: one shared pipeline per method, twins made per request by at_budget in the threads
    shared = {method: zoprune.prune(model, config, budget=BUDGETS[0]) for method, config in METHODS.items()}
    got: list = [None] * len(requests)
    errors = []
    start = threading.Barrier(THREADS)

    def worker(first):
        start.wait()
        try:
            for i in range(first, len(requests), THREADS):
                method, budget, kind, which = requests[i]
                got[i] = run(shared[method].at_budget(budget), kind, pool[which])
        except Exception as error:  # reported below with the request, not lost in the thread
            errors.append((requests[i], error))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for request, result, reference in zip(requests, got, expected):
        try:
            assert_same_request(result, reference)
        except AssertionError:
            raise AssertionError(f"request {request} differs from its sequential run") from None
    assert {method for method, *_ in requests} == set(METHODS) and {kind for *_, kind, _ in requests} == set(KINDS)


def test_last_selection_is_per_thread(model):
    """Each thread reads its own last call's selection, even while other threads call the same object."""
    pruned = zoprune.prune(model, budget=4)
    inputs = llava_batch(model, [[6, 7]], [1], seed=0)
    other = llava_batch(model, [[6, 7], [8]], [1, 1], seed=1)
    pruned.select(**inputs)
    mine = pruned.last_selection
    seen = []
    thread = threading.Thread(target=lambda: seen.append((list(pruned.last_selection), pruned.select(**other))))
    thread.start()
    thread.join()
    (before, theirs), = seen
    assert before == []  # a new thread starts with no selection of its own
    assert len(theirs) == 2 and pruned.last_selection is mine and len(mine) == 1


def test_the_memo_never_hands_a_request_another_inputs_scores(model):
    """Scores come from the memo only for the very tensors they were computed on: a twin called on other tensors
    with equal values, or on tensors changed in place, scores again."""
    base = zoprune.prune(model, budget=4, scorer={"name": "zo_sensitivity", "directions": 4})
    inputs = llava_batch(model, [[6, 7]], [1], seed=0)
    first = base.select(**inputs)[0].scores
    twin = base.at_budget(6)
    assert twin.select(**inputs)[0].scores is first  # the same tensors: reused
    other = llava_batch(model, [[6, 7]], [1], seed=1)
    assert not torch.equal(twin.select(**other)[0].scores, first)
    assert base.select(**inputs)[0].scores is not first  # the memo moved on to `other`: scored again
    inputs["pixel_values"].mul_(-1)
    assert not torch.equal(base.select(**inputs)[0].scores, first)


def test_a_pruned_model_can_be_deep_copied(model):
    """Locks and per-thread state do not travel: a copy starts with an empty memo and no selection, and selects
    what the original selects. (Pickling fails on the transformers model itself once it has run: transformers
    installs hooks that are local functions.)"""
    import copy

    pruned = zoprune.prune(model, budget=4)
    inputs = llava_batch(model, [[6, 7]], [1])
    kept = pruned.select(**inputs)[0].kept
    twin = copy.deepcopy(pruned)
    assert twin.last_selection == [] and twin._memo._entry is None
    assert torch.equal(twin.select(**inputs)[0].kept, kept)
    assert twin.model is not pruned.model
