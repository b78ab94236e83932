"""Paired comparisons from per-question records: exact McNemar, Newcombe's paired interval, the grouping."""

import math

import pytest

from zoprune.errors import InputError
from zoprune.statistics import (Record, default_reference, load_records, mcnemar_exact, newcombe_paired_interval,
                                paired_comparisons, write_records)


def test_mcnemar_exact_by_hand():
    # 1 gained, 5 lost: 6 discordant pairs, P(X <= 1) for Binomial(6, 1/2) is (1 + 6) / 64, doubled
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)  # symmetric
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # all discordant pairs one way: 2 * (1/2)^6
    assert mcnemar_exact(3, 3) == 1.0  # doubling the tail (42/64) overshoots 1: capped
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair, no evidence either way
    assert mcnemar_exact(2, 9) == pytest.approx(2 * (1 + 11 + 55) / 2**11)


def test_mcnemar_exact_matches_scipy():
    from scipy.stats import binomtest

    for gained, lost in [(0, 1), (4, 11), (20, 35), (120, 80), (7, 7)]:
        assert mcnemar_exact(gained, lost) == pytest.approx(binomtest(gained, gained + lost, 0.5).pvalue)


def _wilson(k, n):
    from scipy.stats import binomtest

    interval = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return interval.low, interval.high


def test_newcombe_interval_by_hand():
    # 10 questions: both right 5, first only 3, second only 0, neither 2 -> p1 = 0.8, p2 = 0.5, difference 0.3.
    # Wilson: 8/10 in (0.4902, 0.9433), 5/10 in (0.2366, 0.7634). phi: ad - bc = 10 exceeds n/2 = 5, so the
    # corrected numerator is 5, over sqrt(8 * 2 * 5 * 5) = 20: phi = 0.25.
    # low  = 0.3 - sqrt(0.3098^2 - 2 * 0.25 * 0.3098 * 0.2634 + 0.2634^2) = 0.3 - 0.3529 = -0.0529
    # high = 0.3 + sqrt(0.1433^2 - 2 * 0.25 * 0.1433 * 0.2634 + 0.2634^2) = 0.3 + 0.2665 = 0.5665
    low, high = newcombe_paired_interval(5, 3, 0, 2)
    assert (low, high) == pytest.approx((-0.0529, 0.5665), abs=2e-4)
    # both right 4, first only 3, second only 1, neither 2: ad - bc = 5 is not above n/2, so phi = 0 and the
    # interval is the square-and-add of the two Wilson intervals
    low, high = newcombe_paired_interval(4, 3, 1, 2)
    (l1, u1), (l2, u2) = _wilson(7, 10), _wilson(5, 10)
    assert low == pytest.approx(0.2 - math.hypot(0.7 - l1, u2 - 0.5), abs=1e-4)
    assert high == pytest.approx(0.2 + math.hypot(u1 - 0.7, 0.5 - l2), abs=1e-4)
    assert (low, high) == pytest.approx((-0.2016, 0.5261), abs=2e-4)


def test_newcombe_interval_properties():
    # no discordant pair in 100: Wilson(50, 100) has half-width 0.0962; phi = (2500 - 50) / 2500 = 0.98, so each
    # bound is 0.0962 * sqrt(2 - 2 * 0.98) = 0.0192 from 0 (the unpaired interval would be 0.136)
    assert newcombe_paired_interval(50, 0, 0, 50) == pytest.approx((-0.0192, 0.0192), abs=2e-4)
    low, high = newcombe_paired_interval(0, 10, 0, 0)  # always right against always wrong
    assert 0 < low < 1 and high == 1.0
    # the paired interval is narrower than the unpaired one when the outcomes agree mostly
    low, high = newcombe_paired_interval(880, 30, 10, 80)
    assert low > 0  # 20 more right of 1000, with 40 discordant pairs: separated
    (l1, u1), (l2, u2) = _wilson(910, 1000), _wilson(890, 1000)
    assert high - low < (0.02 + math.hypot(u1 - 0.91, 0.89 - l2)) - (0.02 - math.hypot(0.91 - l1, u2 - 0.89))
    # large n: close to the Wald interval of the paired difference
    b, c, n = 300, 200, 10000
    wald = 1.96 * math.sqrt(b + c - (b - c) ** 2 / n) / n
    low, high = newcombe_paired_interval(8000, b, c, n - 8000 - b - c)
    assert (low, high) == pytest.approx((0.01 - wald, 0.01 + wald), abs=5e-4)
    with pytest.raises(ValueError):
        newcombe_paired_interval(0, 0, 0, 0)


def _records(runs):
    """Records of ``{(method, budget): [correct per question]}``."""
    return [Record(i, "k", f"q{i}", "a", method, budget, "a" if right else "b", right, budget or 16, 16)
            for (method, budget), hits in runs.items() for i, right in enumerate(hits)]


def test_paired_comparisons_from_records(tmp_path):
    runs = {("unpruned", None): [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
            ("zoo-prune", 8): [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
            ("zoo-prune", 4): [1, 1, 1, 0, 0, 0, 0, 0, 0, 1],
            ("divprune", 8): [1, 1, 1, 1, 0, 0, 0, 0, 1, 1],
            ("divprune", 4): [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            ("random", 8): [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}
    records = _records({k: [bool(x) for x in v] for k, v in runs.items()})
    path = write_records(records, tmp_path / "records.jsonl")
    assert load_records(path) == records  # what is written is read back unchanged
    comparisons = paired_comparisons(load_records(path))  # divprune ran: it is the reference
    assert [(c.method, c.budget, c.reference) for c in comparisons] == [
        ("zoo-prune", 8, "divprune"), ("zoo-prune", 4, "divprune"), ("random", 8, "divprune")]
    zoo8, zoo4, random8 = comparisons
    assert (zoo8.gained, zoo8.lost, zoo8.difference) == (2, 2, 0.0) and zoo8.p_value == 1.0
    assert (zoo4.gained, zoo4.lost, zoo4.difference) == (0, 6, pytest.approx(-0.6))
    assert zoo4.p_value == pytest.approx(2 / 64)
    assert (zoo4.low, zoo4.high) == pytest.approx(newcombe_paired_interval(4, 0, 6, 0))
    assert zoo4.separated and not zoo8.separated
    assert random8.lost == 6 and random8.gained == 0 and random8.questions == 10
    # against the unpruned model, every method at every budget
    against_unpruned = paired_comparisons(records, "unpruned")
    assert [(c.method, c.budget) for c in against_unpruned] == [
        ("zoo-prune", 8), ("zoo-prune", 4), ("divprune", 8), ("divprune", 4), ("random", 8)]
    assert (against_unpruned[3].gained, against_unpruned[3].lost) == (2, 0)
    # a reference that did not run at a budget: nothing to compare there
    assert [(c.method, c.budget) for c in paired_comparisons(records, "random")] == [("zoo-prune", 8),
                                                                                   ("divprune", 8)]


def test_default_reference():
    assert default_reference(["unpruned", "zoo-prune", "divprune", "random"]) == "divprune"
    assert default_reference(["unpruned", "zoo-prune", "random"]) == "zoo-prune"
    assert default_reference(["unpruned", "zoo-prune", "zoo-prune"]) == "unpruned"  # one method: the model


def test_paired_comparisons_errors(tmp_path):
    records = _records({("a", 8): [True, False], ("b", 8): [True, True]})
    with pytest.raises(InputError, match="reference 'c' is not in the records"):
        paired_comparisons(records, "c")
    with pytest.raises(InputError, match="different questions"):
        paired_comparisons(records[:3], "a")
    with pytest.raises(InputError, match="appears twice"):
        paired_comparisons(records + records[:1], "a")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(InputError, match="line 1"):
        load_records(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match="not found"):
        load_records(tmp_path / "none.jsonl")
