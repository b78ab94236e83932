"""The shapes data's splits: the standard one is the training distribution, unchanged; the hard one is crowded."""

import hashlib
from collections import Counter

import pytest

from zoprune.shapes.data import KINDS, SPLITS, make_dataset


def test_standard_split_is_the_data_set_it_always_was():
    # the questions, answers and kinds of make_dataset(70, 0) as generated before splits existed (the same draws)
    digest = hashlib.sha256()
    for e in make_dataset(70, 0):
        digest.update((e.question + "|" + e.answer + "|" + e.kind + "\n").encode())
    assert digest.hexdigest() == "f7809d5b721f26205e291bbf85cb6fe663dbc8e2400e3102c2a79fb790d64efa"
    assert [e.question for e in make_dataset(14, 3, "standard")] == [e.question for e in make_dataset(14, 3)]


def test_hard_split_is_crowded_and_confusable():
    examples = make_dataset(280, 1, "hard")
    assert Counter(e.kind for e in examples) == {kind: 40 for kind in KINDS}
    assert all(len(e.objects) == 4 and e.digit is not None for e in examples)  # the most the model was trained on
    assert all(len({o.shape for o in e.objects}) <= 2 and len({o.colour for o in e.objects}) <= 2 for e in examples)
    sizes = Counter(o.size for e in examples for o in e.objects)
    assert 0.65 < sizes["small"] / sum(sizes.values()) < 0.85
    for e in examples:
        if e.kind == "exists" and e.answer == "no":  # the absent object always shares a colour or shape
            colour, shape = e.question.split()[3:5]
            assert any(o.colour == colour or o.shape == shape for o in e.objects)
        if e.kind == "colour":  # asked about a small object whenever a small one has a unique shape
            shape = e.question.split()[4]
            unique_small = [o for o in e.objects if o.size == "small" and sum(p.shape == o.shape
                                                                              for p in e.objects) == 1]
            asked = next(o for o in e.objects if o.shape == shape)
            assert asked.size == "small" or not unique_small
    # answers stay balanced, size too although three objects in four are small
    assert Counter(e.answer for e in examples if e.kind == "exists") == pytest.approx({"yes": 20, "no": 20}, abs=8)
    assert Counter(e.answer for e in examples if e.kind == "size") == pytest.approx({"small": 20, "large": 20},
                                                                                   abs=8)


def test_hard_split_background_is_more_cluttered():
    """The background (pixels outside every object and the digit) varies more in the hard split: more blobs, each
    at high contrast."""
    import numpy as np

    def background_spread(split):
        spreads = []
        for e in make_dataset(70, 2, split):
            pixels = np.asarray(e.image).astype(float)[e.label_map == 0]
            spreads.append(pixels.std(axis=0).mean())
        return np.mean(spreads)

    assert background_spread("hard") > 1.08 * background_spread("standard")  # measured: 17.4 against 15.3
    assert set(SPLITS) == {"standard", "hard"}


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'easy'; expected one of standard, hard"):
        make_dataset(1, 0, "easy")
