"""Reading lmms-eval results files back into the paper's table (``zoprune report``): one row per model, method and
budget, one column per task, the mean score, and the score relative to the unpruned run of the same model.

lmms-eval writes ``<output_path>/<model>/<date>_results.json`` on rank 0; the run's options are in
``config.model_args``, the scores in ``results[task]["<metric>,<filter>"]``. Only the JSON is read: lmms-eval need not
be installed.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from zoprune.errors import InputError

UNPRUNED = "unpruned"
DEFAULT_METHOD = "zoo-prune"  # what --model zoprune runs without method= or config=
#: model_args keys that say how the model ran, not which pipeline: they do not make a row of their own
RUN_KEYS = {"pretrained", "method", "config", "budget", "ratio", "dtype", "attn_implementation", "device_map",
            "trust_remote_code", "device", "batch_size", "max_batch_size"}


@dataclass
class Run:
    """The scores of one results file."""

    path: Path
    model: str  # ``pretrained=``, or "shipped" for the shapes model zoprune ships
    method: str  # the method label, with any config overrides: ``zoo-prune (seed=1)``
    budget: str | None  # ``64`` or ``25%``; None for the unpruned run
    scores: dict[str, float]  # column ("task", or "task/metric" for a task with several) -> score
    higher_is_better: dict[str, bool]
    samples: dict[str, int]  # task -> documents scored
    date: str  # lmms-eval's YYYYMMDD_HHMMSS: sorts in time order


@dataclass
class Row:
    """One line of the table: a model, a method and a budget, over every task they were run on."""

    model: str
    method: str
    budget: str | None
    scores: dict[str, float | None] = field(default_factory=dict)
    relative: dict[str, float | None] = field(default_factory=dict)  # score / the unpruned run's score
    mean: float | None = None  # of the scores (meaningful when the tasks share a scale)
    mean_relative: float | None = None  # of the per-task relative scores: the paper's "Avg."


def parse_model_args(text: str) -> dict[str, str]:
    """``key=value,key=value`` as lmms-eval splits it: commas inside quotes, braces or brackets do not split."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    options = {}
    for part in (p.strip() for p in parts if p.strip()):
        key, _, value = part.partition("=")
        options[key.strip()] = value.strip()
    return options


def read_run(path: str | Path) -> Run:
    """The scores and options of one ``*_results.json``; an InputError names the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        results, config = data["results"], data["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not an lmms-eval results file ({type(error).__name__}: {error})") from None
    options = parse_model_args(config.get("model_args") or "")
    if config.get("model") != "zoprune":
        method = str(config.get("model"))  # another lmms-eval model: its own row, under its name
    elif "config" in options:
        method = Path(options["config"]).stem if not options["config"].startswith("{") else options["config"]
    else:
        method = options.get("method", DEFAULT_METHOD)
    extra = sorted(f"{k}={v}" for k, v in options.items() if k not in RUN_KEYS)
    if extra:
        method += f" ({', '.join(extra)})"
    if method == UNPRUNED:
        budget = None
    elif "ratio" in options:
        budget = f"{100 * float(options['ratio']):g}%"
    else:
        budget = options.get("budget", "64" if config.get("model") == "zoprune" else None)
    scores, directions = {}, {}
    for task, metrics in results.items():
        found = {key: value for key, value in metrics.items()
                 if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
        for key, value in found.items():
            metric, _, filter_name = key.partition(",")
            column = task if len(found) == 1 else f"{task}/{metric}" + ("" if filter_name == "none" else
                                                                        f" ({filter_name})")
            scores[column] = float(value)
            directions[column] = bool(data.get("higher_is_better", {}).get(task, {}).get(metric, True))
    samples = {task: int(n.get("effective", n.get("original", 0))) for task, n in data.get("n-samples", {}).items()}
    return Run(path, options.get("pretrained", "shipped"), method, budget, scores, directions, samples,
               str(data.get("date") or ""))


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``*_results.json`` under the given files and folders."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.rglob("*_results.json"))
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"no such file or folder: {path}")
    if not found:
        raise InputError(f"no lmms-eval results files (*_results.json) under {', '.join(map(str, paths))}")
    return found


def build_table(runs: list[Run]) -> tuple[list[Row], list[str], list[str]]:
    """``(rows, columns, notes)``: the rows in order (per model: unpruned first, then methods as first seen, budgets
    falling), the task columns, and what was merged or missing."""
    notes: list[str] = []
    rows: dict[tuple[str, str, str | None], Row] = {}
    chosen: dict[tuple[str, str, str | None, str], Run] = {}
    directions: dict[str, bool] = {}
    # a later run of the same cell replaces an earlier one
    for run in sorted(runs, key=lambda r: (r.date, str(r.path))):
        row = rows.setdefault((run.model, run.method, run.budget), Row(run.model, run.method, run.budget))
        for column, value in run.scores.items():
            previous = chosen.get((run.model, run.method, run.budget, column))
            if previous is not None:
                notes.append(f"{column} of {run.method} at {run.budget}: {run.path} replaces {previous.path}")
            chosen[(run.model, run.method, run.budget, column)] = run
            row.scores[column] = value
            directions[column] = run.higher_is_better[column]
    columns = list(dict.fromkeys(c for run in runs for c in run.scores))
    for row in rows.values():
        reference = rows.get((row.model, UNPRUNED, None))
        for column in columns:
            score, base = row.scores.get(column), reference.scores.get(column) if reference else None
            row.scores.setdefault(column, None)
            if score is not None and base and directions[column]:
                row.relative[column] = score / base
            else:
                row.relative[column] = None
        present = [s for s in row.scores.values() if s is not None]
        relatives = [r for r in row.relative.values() if r is not None]
        row.mean = sum(present) / len(present) if present else None
        row.mean_relative = sum(relatives) / len(relatives) if relatives else None
        missing = [c for c in columns if row.scores[c] is None]
        if missing:
            notes.append(f"{row.model}: {row.method} at {row.budget} has no result for {', '.join(missing)}")
    for model in dict.fromkeys(row.model for row in rows.values()):
        if (model, UNPRUNED, None) not in rows:
            notes.append(f"{model}: no method=unpruned run, so no relative scores")

    def order(row: Row) -> tuple:
        methods = list(dict.fromkeys(r.method for r in runs))
        budget = float(row.budget.rstrip("%")) if row.budget and _is_number(row.budget.rstrip("%")) else 0.0
        return (row.model, row.method != UNPRUNED, methods.index(row.method), -budget)

    return sorted(rows.values(), key=order), columns, notes


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_table(rows: list[Row], columns: list[str], out_dir: Path) -> list[Path]:
    """report.json and report.csv in ``out_dir``: per-task scores and relative scores, the means."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    csv_path = out_dir / "report.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "method", "budget", *columns, *(f"relative_{c}" for c in columns), "mean",
                         "mean_relative"])
        for r in rows:
            writer.writerow([r.model, r.method, r.budget, *(r.scores[c] for c in columns),
                             *(r.relative[c] for c in columns), r.mean, r.mean_relative])
    return [json_path, csv_path]


def plot_table(rows: list[Row], path: Path, title: str = "") -> Path:
    """The mean relative score (or the mean score, without an unpruned run) against the budget, one line per method
    and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    relative = any(r.mean_relative is not None for r in rows if r.method != UNPRUNED)
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    models = list(dict.fromkeys(r.model for r in rows))
    for (model, method) in dict.fromkeys((r.model, r.method) for r in rows if r.method != UNPRUNED):
        points = sorted((float(r.budget), r.mean_relative if relative else r.mean) for r in rows
                        if r.model == model and r.method == method and r.budget and _is_number(r.budget))
        points = [(x, y) for x, y in points if y is not None]
        if points:
            label = method if len(models) == 1 else f"{method} ({model})"
            axis.plot([x for x, _ in points], [100 * y for _, y in points], marker="o", label=label)
    if relative:
        axis.axhline(100, color="black", linestyle="--", label="unpruned")
    axis.set_xscale("log", base=2)
    budgets = sorted({float(r.budget) for r in rows if r.budget and _is_number(r.budget)})
    if budgets:
        axis.set_xticks(budgets, [f"{b:g}" for b in budgets])
    axis.set_xlabel("visual tokens kept per image")
    axis.set_ylabel("mean score relative to unpruned (%)" if relative else "mean score (%)")
    axis.set_title(title or "lmms-eval results")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def format_score(value: float | None) -> str:
    """A score as lmms-eval tasks report it: fractions as percentages, larger scores (MME's) as they are."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if abs(value) <= 1 else f"{value:.1f}"


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Files read and documents scored per task (for the header of the report)."""
    samples: dict[str, set[int]] = {}
    for run in runs:
        for task, n in run.samples.items():
            samples.setdefault(task, set()).add(n)
    return {"files": len(runs), "documents": {task: sorted(ns) for task, ns in samples.items()}}
