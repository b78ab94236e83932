"""Accuracy of pruning methods at several budgets on a VQA set: the measurement behind ``zoprune eval``.

Answers are scored by exact match after normalisation (lower case, punctuation removed, whitespace collapsed);
each accuracy comes with a 95% Wilson interval, and relative accuracy (pruned / unpruned) is reported as the paper
does. Every answer is kept as a :class:`~zoprune.statistics.Record` (one per question and run), from which the
paired comparisons of :mod:`zoprune.statistics` are computed.
"""

from __future__ import annotations

import itertools
import json
import math
import string
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from zoprune.config import PipelineConfig
from zoprune.errors import InputError
from zoprune.pipeline import PrunedModel, prune
from zoprune.statistics import Paired, Record

UNPRUNED = "unpruned"
KEEP_ALL = 2**31 - 1  # a budget no image reaches


@dataclass(frozen=True)
class Example:
    """One question about one image."""

    image: Any  # PIL.Image
    question: str
    answer: str
    kind: str = "all"


@dataclass
class Result:
    """The accuracy of one method at one budget (or of the unpruned model)."""

    method: str
    budget: int | None  # tokens kept per image, None for the unpruned model
    kept_tokens: float  # mean visual tokens the language model saw per image
    total_tokens: float  # mean visual tokens per image before pruning
    correct: int
    total: int
    accuracy: float
    ci_low: float
    ci_high: float
    relative: float | None = None  # accuracy / unpruned accuracy
    by_kind: dict[str, float] | None = None
    config: dict[str, Any] | None = None  # the pipeline config that ran, every parameter written out
    # the paired comparison with the reference method at the same budget (zoprune.statistics), when there is one
    reference: str | None = None
    difference: float | None = None  # accuracy - the reference's accuracy
    difference_low: float | None = None  # its 95% paired interval (Newcombe)
    difference_high: float | None = None
    mcnemar_p: float | None = None  # exact McNemar p-value
    gained: int | None = None  # questions right here and wrong for the reference
    lost: int | None = None  # questions wrong here and right for the reference
    separated: bool | None = None  # whether the interval excludes 0

    def attach(self, paired: Paired) -> None:
        """Take the paired comparison's figures."""
        self.reference, self.difference = paired.reference, paired.difference
        self.difference_low, self.difference_high, self.mcnemar_p = paired.low, paired.high, paired.p_value
        self.gained, self.lost, self.separated = paired.gained, paired.lost, paired.separated


def normalize(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def is_correct(answer: str, expected: str) -> bool:
    """The scoring rule: exact match after :func:`normalize`."""
    return normalize(answer) == normalize(expected)


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (well behaved near 0 and 1, unlike the normal one)."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# `pragma: no mutate block`: file input and output, the generate loop and drawing are left out of the
# mutation run, which checks the arithmetic (docs/development.md); the command tests cover them.
def load_jsonl(path: str | Path) -> list[Example]:  # pragma: no mutate block
    """Examples from a JSONL file of ``{"image": path, "question": ..., "answer": ..., "kind": optional}`` lines;
    image paths are relative to the file."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image_path = path.parent / row["image"]
            examples.append(Example(Image.open(image_path).convert("RGB"), row["question"], str(row["answer"]),
                                    row.get("kind", "all")))
        except (KeyError, json.JSONDecodeError, OSError) as error:
            raise InputError(f"{path}, line {number}: {type(error).__name__}: {error} "
                             f"(each line needs image, question and answer)") from None
    if not examples:
        raise InputError(f"{path} holds no examples")
    return examples


class ShapesExamples(Sequence[Example]):
    """The held-out set of the shipped shapes model: ``n`` generated questions, reproducible from ``seed``.

    Generated on the fly, the same questions as ``zoprune.shapes.data.make_dataset(n, seed, split)``: iterating
    makes each example when it is needed, so a run over 10,000 questions holds one batch of images at a time, not
    10,000.
    Indexing regenerates up to the index (meant for a look at a few examples).
    """

    def __init__(self, n: int, seed: int, split: str = "standard"):
        self.n, self.seed, self.split = n, seed, split

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Example]:
        import numpy as np

        from zoprune.shapes.data import KINDS, make_example

        rng = np.random.default_rng(self.seed)  # make_dataset's draws, in its order
        for i in range(self.n):
            e = make_example(rng, KINDS[i % len(KINDS)], self.split)
            yield Example(e.image, e.question, e.answer, e.kind)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(itertools.islice(iter(self), *index.indices(self.n)))
        position = index + self.n if index < 0 else index
        if not 0 <= position < self.n:
            raise IndexError(f"example {index} of {self.n}")
        return next(itertools.islice(iter(self), position, None))


def shapes_examples(n: int, seed: int, split: str = "standard") -> ShapesExamples:
    """The held-out set of the shipped shapes model: ``n`` generated questions of ``split``, reproducible from
    ``seed`` (a lazy sequence, see :class:`ShapesExamples`)."""
    return ShapesExamples(n, seed, split)


@torch.no_grad()
def answer_all(models: Sequence[Any], processor: Any, examples: Iterable[Example], prompt: Callable[[str], str],
               batch_size: int = 32, max_new_tokens: int = 4,
               on_batch: Callable[[int], None] | None = None,
               device: str | torch.device | None = None,
               ) -> list[tuple[list[str], list[int], list[int]]]:  # pragma: no mutate block
    """Greedy answers of each model (a model or a PrunedModel) with the visual tokens kept and seen per image.
    The processor's outputs are moved to ``device`` when one is given (the models' device).

    Every model answers a batch before the next batch is built, so PrunedModels that are budget twins
    (:meth:`PrunedModel.at_budget`) score each batch once. ``examples`` is read once, a batch at a time (an iterator
    will do). Returns ``(answers, kept, total)`` per model.
    """
    results: list[tuple[list[str], list[int], list[int]]] = [([], [], []) for _ in models]
    remaining = iter(examples)
    while batch := list(itertools.islice(remaining, batch_size)):
        inputs = processor(images=[e.image for e in batch], text=[prompt(e.question) for e in batch],
                           return_tensors="pt", padding=True)
        if device is not None:
            inputs = inputs.to(device)
        length = inputs["input_ids"].shape[1]
        for model, (answers, kept, total) in zip(models, results):
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            answers += processor.batch_decode(output[:, length:], skip_special_tokens=True)
            if isinstance(model, PrunedModel):
                kept += [s.num_kept for s in model.last_selection]
                total += [s.num_tokens for s in model.last_selection]
            if on_batch is not None:
                on_batch(len(batch))
    return results


def score(method: str, budget: int | None, examples: Sequence[Example], answers: Sequence[str],
          kept: Sequence[int], total: Sequence[int]) -> Result:
    """The :class:`Result` of one run: exact-match accuracy with its Wilson interval, per kind too; ``kept`` and
    ``total`` are the visual tokens kept and present per image."""
    hits = [is_correct(a, e.answer) for e, a in zip(examples, answers)]
    correct = sum(hits)
    low, high = wilson_interval(correct, len(hits))
    kinds: dict[str, list[bool]] = {}
    for example, hit in zip(examples, hits):
        kinds.setdefault(example.kind, []).append(hit)
    return Result(method, budget, sum(kept) / max(len(kept), 1), sum(total) / max(len(total), 1), correct, len(hits),
                  correct / max(len(hits), 1), low, high,
                  by_kind={kind: sum(v) / len(v) for kind, v in sorted(kinds.items())})


def evaluate(model: Any, processor: Any, examples: Sequence[Example], methods: dict[str, PipelineConfig],
             budgets: Sequence[int], prompt: Callable[[str], str], batch_size: int = 32,
             on_batch: Callable[[int], None] | None = None, device: str | torch.device | None = None) -> list[Result]:
    """The unpruned model, then every method at every budget, on the same examples: the results of
    :func:`evaluate_with_records`."""
    return evaluate_with_records(model, processor, examples, methods, budgets, prompt, batch_size, on_batch,
                                 device)[0]


def evaluate_with_records(model: Any, processor: Any, examples: Sequence[Example],
                          methods: dict[str, PipelineConfig], budgets: Sequence[int], prompt: Callable[[str], str],
                          batch_size: int = 32, on_batch: Callable[[int], None] | None = None,
                          device: str | torch.device | None = None) -> tuple[list[Result], list[Record]]:
    """The unpruned model, then every method at every budget, on the same examples (moved to ``device``, the
    model's, when given): one :class:`Result` per run, and one :class:`Record` per question and run (run by run,
    questions in data-set order).

    One pass over ``examples``: every model answers a batch before the next one is built, and only each question's
    text, answers and kind are kept, so memory does not grow with the images (benchmarks/eval_memory.py).
    """
    labels: list[Example] = []  # each question without its image

    def tracked() -> Iterator[Example]:
        for example in examples:
            labels.append(Example(None, example.question, example.answer, example.kind))
            yield example

    # keeping every token gives exactly the unpruned model's outputs (a tested guarantee) and counts the tokens
    runs = [(UNPRUNED, None, prune(model, budget=KEEP_ALL))]
    for name, config in methods.items():
        base = prune(model, config)
        runs += [(name, budget, base.at_budget(budget)) for budget in budgets]
    outputs = answer_all([pruned for *_, pruned in runs], processor, tracked(), prompt, batch_size, on_batch=on_batch,
                         device=device)
    results = [score(name, budget, labels, *output) for (name, budget, _), output in zip(runs, outputs)]
    reference = results[0]
    reference.relative = 1.0
    for result, (name, _, pruned) in zip(results[1:], runs[1:]):
        result.config = ran_config(pruned)
        result.relative = result.accuracy / reference.accuracy if reference.accuracy else None
    records = [Record(i, label.kind, label.question, label.answer, name, budget, answer,
                      is_correct(answer, label.answer), kept, total)
               for (name, budget, _), (answers, kept_tokens, total_tokens) in zip(runs, outputs)
               for i, (label, answer, kept, total) in enumerate(zip(labels, answers, kept_tokens, total_tokens))]
    return results, records


def ran_config(pruned: PrunedModel) -> dict[str, Any]:
    """The config ``pruned`` runs, every parameter written out, with the adapter it detected for the model."""
    config = pruned.config.resolved_dict()
    config.setdefault("adapter", {"name": pruned.adapter.name, **pruned.adapter.config.model_dump(mode="json")})
    return config


def write_results(results: Sequence[Result], out_dir: Path) -> list[Path]:  # pragma: no mutate block
    """results.json and results.csv in ``out_dir``."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    csv_path = out_dir / "results.csv"
    kinds = sorted({k for r in results for k in (r.by_kind or {})})
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        fields = ["method", "budget", "kept_tokens", "total_tokens", "correct", "total", "accuracy", "ci_low",
                  "ci_high", "relative", "reference", "difference", "difference_low", "difference_high", "mcnemar_p",
                  "gained", "lost", "separated"]
        writer.writerow(fields + [f"accuracy_{k}" for k in kinds])
        for r in rows:
            writer.writerow([r[f] for f in fields] + [(r["by_kind"] or {}).get(k) for k in kinds])
    return [json_path, csv_path]


#: the tab10 colours and seven markers: 7 and 10 share no factor, so method i's (colour i % 10, marker i % 7) pair
#: repeats only after 70 methods, and neighbours in the legend differ in both
PLOT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf")
PLOT_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DEFAULT_METHOD = "zoo-prune"  # the paper's method, PipelineConfig's defaults


def plot_styles(methods: Sequence[str], first: str = DEFAULT_METHOD) -> dict[str, dict[str, Any]]:
    """Line styles for the accuracy plot, in legend order: ``first`` (when present) leads with a thicker line drawn
    on top, and every method gets its own (colour, marker) pair."""
    ordered = sorted(dict.fromkeys(methods), key=lambda m: m != first)  # stable: the others keep their order
    return {method: {"color": PLOT_COLOURS[i % len(PLOT_COLOURS)], "marker": PLOT_MARKERS[i % len(PLOT_MARKERS)],
                     "linewidth": 2.4 if method == first else 1.2, "zorder": 3 if method == first else 2}
            for i, method in enumerate(ordered)}


def plot_results(results: Sequence[Result], path: Path, title: str = "") -> Path:  # pragma: no mutate block
    """Accuracy versus visual tokens kept, one line per method (styled by :func:`plot_styles`), the unpruned
    accuracy as a dashed reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    reference = next((r for r in results if r.method == UNPRUNED), None)
    styles = plot_styles([r.method for r in results if r.method != UNPRUNED])
    for method, style in styles.items():
        rows = sorted((r for r in results if r.method == method), key=lambda r: r.kept_tokens)
        x = [r.kept_tokens for r in rows]
        y = [100 * r.accuracy for r in rows]
        error = [[100 * (r.accuracy - r.ci_low) for r in rows], [100 * (r.ci_high - r.accuracy) for r in rows]]
        axis.errorbar(x, y, yerr=error, capsize=3, label=method, **style)
    if reference is not None:
        axis.axhline(100 * reference.accuracy, color="black", linestyle="--",
                     label=f"unpruned ({reference.kept_tokens:.0f} tokens)")
    axis.set_xscale("log", base=2)
    kept = sorted({r.kept_tokens for r in results if r.method != UNPRUNED})
    if kept:
        axis.set_xticks(kept, [f"{k:g}" for k in kept])
    axis.set_xlabel("visual tokens kept per image")
    axis.set_ylabel("accuracy (%), 95% interval")
    axis.set_title(title or "accuracy versus visual tokens kept")
    axis.grid(alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()  # matplotlib lists plain lines (unpruned) first
    order = sorted(range(len(labels)), key=lambda i: labels[i] not in styles)  # the methods, then unpruned
    axis.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8,
                ncol=2 if len(styles) > 10 else 1)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_paired(comparisons: Sequence[Paired], path: Path, title: str = "") -> Path:  # pragma: no mutate block
    """Each method's accuracy difference to the reference versus the budget, with its 95% paired interval as error
    bars (styled by :func:`plot_styles`; methods at one budget are spread sideways so the bars do not overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = plot_styles([c.method for c in comparisons])
    shift = 2 ** (0.025 * (len(styles) - 1) / 2)  # half the sideways spread, as a factor on the log axis
    for i, (method, style) in enumerate(styles.items()):
        rows = sorted((c for c in comparisons if c.method == method), key=lambda c: c.budget or 0)
        x = [c.budget * shift ** (-1 + 2 * i / max(len(styles) - 1, 1)) for c in rows]
        y = [100 * c.difference for c in rows]
        error = [[100 * (c.difference - c.low) for c in rows], [100 * (c.high - c.difference) for c in rows]]
        axis.errorbar(x, y, yerr=error, capsize=3, label=method, **style)
    reference = comparisons[0].reference if comparisons else "the reference"
    axis.axhline(0, color="black", linestyle="--", label=reference)
    axis.set_xscale("log", base=2)
    budgets = sorted({c.budget for c in comparisons if c.budget is not None})
    if budgets:
        axis.set_xticks(budgets, [f"{b:g}" for b in budgets])
        axis.minorticks_off()
    axis.set_xlabel("visual tokens kept per image")
    axis.set_ylabel(f"accuracy - {reference} (points), 95% paired interval")
    axis.set_title(textwrap.fill(title or f"difference to {reference} at the same budget", 80), fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2 if len(styles) > 10 else 1)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
