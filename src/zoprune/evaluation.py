"""Accuracy of pruning methods at several budgets on a VQA set: the measurement behind ``zoprune eval``.

Answers are scored by exact match after normalisation (lower case, punctuation removed, whitespace collapsed);
each accuracy comes with a 95% Wilson interval, and relative accuracy (pruned / unpruned) is reported as the paper
does.
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from zoprune.config import PipelineConfig
from zoprune.errors import InputError
from zoprune.pipeline import prune

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


def normalize(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


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


def shapes_examples(n: int, seed: int) -> list[Example]:  # pragma: no mutate block
    """The held-out set of the shipped shapes model: ``n`` generated questions, reproducible from ``seed``."""
    from zoprune.shapes.data import make_dataset

    return [Example(e.image, e.question, e.answer, e.kind) for e in make_dataset(n, seed)]


@torch.no_grad()
def answer_all(
    models: Sequence[Any], processor: Any, examples: Sequence[Example], prompt: Callable[[str], str],
    batch_size: int = 32, max_new_tokens: int = 4, on_batch: Callable[[int], None] | None = None,
) -> list[tuple[list[str], list[int], list[int]]]:  # pragma: no mutate block
    """Greedy answers of each model (a model or a PrunedModel) with the visual tokens kept and seen per image.

    Every model answers a batch before the next batch is built, so PrunedModels that are budget twins
    (:meth:`PrunedModel.at_budget`) score each batch once. Returns ``(answers, kept, total)`` per model.
    """
    from zoprune.pipeline import PrunedModel

    results: list[tuple[list[str], list[int], list[int]]] = [([], [], []) for _ in models]
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        inputs = processor(images=[e.image for e in batch], text=[prompt(e.question) for e in batch],
                           return_tensors="pt", padding=True)
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
    hits = [normalize(a) == normalize(e.answer) for e, a in zip(examples, answers)]
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
             on_batch: Callable[[int], None] | None = None) -> list[Result]:
    """The unpruned model, then every method at every budget, on the same examples."""
    # keeping every token gives exactly the unpruned model's outputs (a tested guarantee) and counts the tokens
    (answers, kept, total), = answer_all([prune(model, budget=KEEP_ALL)], processor, examples, prompt, batch_size,
                                         on_batch=on_batch)
    reference = score(UNPRUNED, None, examples, answers, kept, total)
    reference.relative = 1.0
    results = [reference]
    for name, config in methods.items():
        base = prune(model, config)
        runs = answer_all([base.at_budget(b) for b in budgets], processor, examples, prompt, batch_size,
                          on_batch=on_batch)
        for budget, (answers, kept, total) in zip(budgets, runs):
            result = score(name, budget, examples, answers, kept, total)
            result.relative = result.accuracy / reference.accuracy if reference.accuracy else None
            results.append(result)
    return results


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
                  "ci_high", "relative"]
        writer.writerow(fields + [f"accuracy_{k}" for k in kinds])
        for r in rows:
            writer.writerow([r[f] for f in fields] + [(r["by_kind"] or {}).get(k) for k in kinds])
    return [json_path, csv_path]


def plot_results(results: Sequence[Result], path: Path, title: str = "") -> Path:  # pragma: no mutate block
    """Accuracy versus visual tokens kept, one line per method, the unpruned accuracy as a dashed reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    reference = next((r for r in results if r.method == UNPRUNED), None)
    methods = [m for m in dict.fromkeys(r.method for r in results) if m != UNPRUNED]
    for method in methods:
        rows = sorted((r for r in results if r.method == method), key=lambda r: r.kept_tokens)
        x = [r.kept_tokens for r in rows]
        y = [100 * r.accuracy for r in rows]
        error = [[100 * (r.accuracy - r.ci_low) for r in rows], [100 * (r.ci_high - r.accuracy) for r in rows]]
        axis.errorbar(x, y, yerr=error, marker="o", capsize=3, label=method)
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
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
