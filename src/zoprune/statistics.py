"""Paired comparisons of pruning methods, computed from ``zoprune eval``'s per-question records.

Every method answers the same questions, so two methods at one budget are compared question by question: what
matters is the questions one gets right and the other wrong (the discordant pairs). For each method and budget,
against a reference method at the same budget:

* the accuracy difference (method minus reference);
* an exact McNemar test: the two-sided binomial test of the discordant pairs against 1/2;
* a 95% interval for the paired difference by Newcombe's hybrid score method ("method 10" of Newcombe 1998,
  Statistics in Medicine 17:2635, as worked in Altman et al., *Statistics with Confidence*, 2000): the two
  accuracies' Wilson intervals combined with the correlation of the paired outcomes (its continuity-corrected
  phi). It stays inside [-1, 1] and behaves with few discordant pairs, where the Wald interval does not.

A difference is *separated* when its interval excludes 0. The records are the JSONL lines
:func:`zoprune.evaluation.write_records` writes: one per question and run (see :class:`Record`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from zoprune.errors import InputError

UNPRUNED = "unpruned"


@dataclass(frozen=True, slots=True)  # slots: a long run holds one per question and run (about 100 bytes each)
class Record:
    """One question answered by one run (a method at a budget, or the unpruned model)."""

    id: int  # the question's position in the data set
    kind: str
    question: str
    expected: str
    method: str
    budget: int | None  # None for the unpruned model
    answer: str  # the model's answer as decoded, before normalisation
    correct: bool
    kept: int  # visual tokens the language model saw for this question's image
    total: int  # visual tokens of the image before pruning


@dataclass
class Paired:
    """One method at one budget against the reference at the same budget, on the same questions."""

    method: str
    budget: int | None
    reference: str
    questions: int
    gained: int  # questions the method gets right and the reference wrong
    lost: int  # questions the reference gets right and the method wrong
    difference: float  # accuracy(method) - accuracy(reference), a fraction
    low: float  # 95% paired interval of the difference (Newcombe's hybrid score)
    high: float
    p_value: float  # exact McNemar (two-sided binomial on the discordant pairs)

    @property
    def separated(self) -> bool:
        """Whether the interval excludes 0: the difference is more than this many questions can blur."""
        return self.low > 0 or self.high < 0


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: under no difference each discordant pair is a fair coin, so the smaller
    discordant count is Binomial(gained + lost, 1/2); the p-value doubles its tail (capped at 1)."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return centre - half, centre + half


def newcombe_paired_interval(both: int, gained: int, lost: int, neither: int,
                             z: float = 1.96) -> tuple[float, float]:
    """95% interval of p1 - p2 for paired proportions (Newcombe's method 10), from the 2x2 table of outcomes:
    ``both`` right, ``gained`` (first right, second wrong), ``lost`` (first wrong, second right), ``neither``."""
    n = both + gained + lost + neither
    if n == 0:
        raise ValueError("no paired outcomes")
    right_1, right_2 = both + gained, both + lost
    p1, p2 = right_1 / n, right_2 / n
    l1, u1 = _wilson(right_1, n, z)
    l2, u2 = _wilson(right_2, n, z)
    # phi, the correlation of the two outcomes, with Newcombe's continuity correction of its numerator;
    # 0 when a margin is empty (one of the methods is always or never right)
    margins = right_1 * (n - right_1) * right_2 * (n - right_2)
    numerator = both * neither - gained * lost
    if numerator > n / 2:
        numerator -= n / 2
    elif numerator >= 0:
        numerator = 0
    phi = numerator / math.sqrt(margins) if margins else 0.0
    difference = p1 - p2
    low = difference - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = difference + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


def runs(records: Iterable[Record]) -> dict[tuple[str, int | None], dict[int, Record]]:
    """The records grouped by run, ``(method, budget)``, in the order they first appear, each keyed by question."""
    grouped: dict[tuple[str, int | None], dict[int, Record]] = {}
    for record in records:
        by_id = grouped.setdefault((record.method, record.budget), {})
        if record.id in by_id:
            raise InputError(f"question {record.id} appears twice for {record.method} at budget {record.budget}")
        by_id[record.id] = record
    return grouped


def default_reference(methods: Sequence[str]) -> str:
    """divprune when it ran (the strongest training-free baseline, pure diversity); else the first method when
    several ran; else the unpruned model."""
    pruned = [m for m in dict.fromkeys(methods) if m != UNPRUNED]
    if "divprune" in pruned:
        return "divprune"
    return pruned[0] if len(pruned) > 1 else UNPRUNED


def paired_comparisons(records: Iterable[Record], reference: str | None = None) -> list[Paired]:
    """Every method at every budget against ``reference`` at the same budget (the unpruned model, having no
    budget, is compared with every budget), in the records' run order; ``reference`` defaults to
    :func:`default_reference`. The runs must hold the same questions."""
    grouped = runs(records)
    methods = [method for method, _ in grouped]
    reference = default_reference(methods) if reference is None else reference
    if reference not in methods:
        raise InputError(f"the reference {reference!r} is not in the records; they hold "
                         f"{', '.join(dict.fromkeys(methods))}")
    out = []
    for (method, budget), answers in grouped.items():
        if method in (reference, UNPRUNED):
            continue
        against = grouped.get((reference, None if reference == UNPRUNED else budget))
        if against is None:
            continue  # the reference did not run at this budget
        if answers.keys() != against.keys():
            raise InputError(f"{method} at budget {budget} and {reference} answered different questions")
        both = gained = lost = neither = 0
        for question, record in answers.items():
            mine, theirs = record.correct, against[question].correct
            both += mine and theirs
            gained += mine and not theirs
            lost += theirs and not mine
            neither += not mine and not theirs
        n = len(answers)
        low, high = newcombe_paired_interval(both, gained, lost, neither)
        out.append(Paired(method, budget, reference, n, gained, lost, (gained - lost) / n, low, high,
                          mcnemar_exact(gained, lost)))
    return out


def write_records(records: Iterable[Record], path: Path) -> Path:  # pragma: no mutate block
    """The records as JSONL, one line per question and run."""
    from dataclasses import asdict

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for record in records:
            handle.write(json.dumps(asdict(record)) + "\n")
    return path


def load_records(path: str | Path) -> list[Record]:  # pragma: no mutate block
    """The records of a ``records.jsonl`` written by ``zoprune eval``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"records file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(Record(**json.loads(line)))
            except (TypeError, json.JSONDecodeError) as error:
                raise InputError(f"{path}, line {number}: {error}") from None
    return records


def paired_rows(comparisons: Sequence[Paired]) -> list[dict[str, Any]]:
    """The comparisons as flat rows for CSV and JSON (``separated`` written out)."""
    from dataclasses import asdict

    return [{**asdict(c), "separated": c.separated} for c in comparisons]
