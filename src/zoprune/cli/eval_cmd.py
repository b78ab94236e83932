"""``zoprune eval``: accuracy of pruning methods at several budgets, as a table, CSV/JSON and a plot; per-question
records, and each method's paired difference to a reference method at the same budget."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from zoprune.cli.app import app, console, friendly_errors
from zoprune.cli.output import print_table
from zoprune.cli.loading import method_notes
from zoprune.loading import check_device, load_model, prompt_text
from zoprune.methods import available_methods, resolve_method
from zoprune.errors import ZopruneError

DEFAULT_BUDGETS = [64, 32, 16, 8]
HELD_OUT_SEED = 20261124  # the shapes model was trained on other seeds; see its model card


@app.command("eval", short_help="Accuracy of methods at several budgets.")
@friendly_errors
def eval_command(
    method: Optional[List[str]] = typer.Option(
        None, "--method", "-m",
        help="method name, selector, SCORER+SELECTOR or config file; repeat for several [default: all available]"),
    budget: Optional[List[int]] = typer.Option(None, "--budget", "-b", help="tokens kept per image; repeatable "
                                               "[default: 64 32 16 8]"),
    model: Optional[str] = typer.Option(None, "--model", help="checkpoint directory or hub id [default: shipped]"),
    data: Optional[Path] = typer.Option(None, "--data", help="JSONL of image, question, answer "
                                        "[default: the shapes held-out set]"),
    n: int = typer.Option(1000, "--n", min=1, help="questions generated for the shapes held-out set"),
    seed: int = typer.Option(HELD_OUT_SEED, "--seed", help="seed of the generated held-out set"),
    split: str = typer.Option("standard", "--split", help="the shapes held-out set's split: standard (the "
                              "training distribution) or hard (crowded scenes, small objects, distractors)"),
    reference: Optional[str] = typer.Option(None, "--reference", help="method the others are compared with, "
                                            "question by question, at the same budget (or 'unpruned') "
                                            "[default: divprune when it runs, else the first method]"),
    positions: Optional[str] = typer.Option(
        None, "--positions", help="contiguous or original: rotary positions after pre-LLM pruning, for every "
        "method [default: each method's config]"),
    batch_size: int = typer.Option(50, "--batch-size", min=1),
    out: Path = typer.Option(Path("zoprune-eval"), "--out",
                             help="folder for results.csv, results.json (with each method's whole config), "
                                  "records.jsonl (every answer), accuracy.png, paired.png"),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="write accuracy.png and paired.png (needs matplotlib)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
) -> None:
    """Accuracy of each method at each budget against the unpruned model, on the same questions."""
    from zoprune.evaluation import (evaluate_with_records, load_jsonl, plot_paired, plot_results, shapes_examples,
                                    write_results)
    from zoprune.shapes.data import SPLITS
    from zoprune.statistics import UNPRUNED, default_reference, paired_comparisons, write_records

    budgets = budget or DEFAULT_BUDGETS
    if any(b < 1 for b in budgets):
        raise ZopruneError(f"budgets must be at least 1 token, got {sorted(budgets)}")
    if split not in SPLITS:
        raise ZopruneError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if split != "standard" and (data is not None or model is not None):
        raise ZopruneError("--split chooses the generated shapes set; it does not apply to --data or --model")
    resolved = [(m, *resolve_method(m)) for m in (method or available_methods())]
    methods = {label: config for _, label, config in resolved}
    notes = []
    if reference is not None and reference != UNPRUNED and reference not in methods:
        label, config = resolve_method(reference)
        if label not in methods:  # a method named only as the reference runs too, so that it can be compared
            methods[label] = config
            notes.append(f"the reference {label} is not among the methods; it runs too")
        reference = label
    reference = reference or default_reference(list(methods))
    if positions is not None:
        from zoprune.pipeline import resolve_config

        methods = {label: resolve_config(config, positions=positions) for label, config in methods.items()}
    notes = [note for text, _, config in resolved for note in method_notes(text, config, budget_given=True)] + notes
    if plot:
        require_matplotlib()
    check_device(device)
    with console.status("loading model and data"):
        hf_model, processor = load_model(model, device=device)
        if data is not None:
            examples, source = load_jsonl(data), str(data)
        elif model is None:
            examples = shapes_examples(n, seed, split)
            source = f"shapes held-out set ({n} questions, seed {seed}" + \
                (")" if split == "standard" else f", {split} split)")
        else:
            raise ZopruneError("--data is required with --model: the generated shapes set only suits the shipped "
                               "model")

    if not method:  # the default set: leave out the methods this model cannot run, and say why
        methods, left_out = runnable_methods(hf_model, methods)
        notes += [f"{label} left out: {why}" for label, why in left_out]
    console.print(f"[bold]data:[/] {source}   [bold]methods:[/] {', '.join(methods)}   "
                  f"[bold]budgets:[/] {', '.join(map(str, budgets))}   [bold]reference:[/] {reference}",
                  highlight=False)
    for note in notes:
        console.print(Text("note: ", style="yellow") + Text(note), highlight=False)
    runs = 1 + len(methods) * len(budgets)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("evaluating", total=runs * len(examples))
        results, records = evaluate_with_records(
            hf_model, processor, examples, methods, budgets, lambda q: prompt_text(processor, q),
            batch_size=batch_size, on_batch=lambda count: progress.advance(task, count), device=device)
    comparisons = paired_comparisons(records, reference)  # from the records, as anyone re-analysing them would
    by_run = {(c.method, c.budget): c for c in comparisons}
    for result in results:
        if (result.method, result.budget) in by_run:
            result.attach(by_run[(result.method, result.budget)])

    table = Table(title=f"accuracy on {source}")
    for column in ("method", "kept / image", "accuracy", "95% interval", "relative"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in results:
        table.add_row(r.method, f"{r.kept_tokens:g} / {r.total_tokens:g}", f"{100 * r.accuracy:.1f}%",
                      f"{100 * r.ci_low:.1f} - {100 * r.ci_high:.1f}",
                      f"{100 * r.relative:.1f}%" if r.relative is not None else "-")
    print_table(console, table)
    if comparisons:
        print_table(console, paired_table(comparisons, reference))
    written = write_results(results, out) + [write_records(records, out / "records.jsonl")]
    if plot:
        written.append(plot_results(results, out / "accuracy.png", title=f"accuracy on {source}"))
        if comparisons:
            written.append(plot_paired(comparisons, out / "paired.png",
                                       title=f"difference to {reference} at the same budget, {source}"))
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)


def runnable_methods(model, methods: dict) -> tuple[dict, list[tuple[str, str]]]:
    """The methods ``zoprune.prune`` accepts for ``model`` (building a pipeline runs nothing), and the others with
    the first clause of the reason (e.g. ``downsample`` on a fixed-resolution LLaVA)."""
    import zoprune
    from zoprune.errors import ConfigError, UnsupportedModelError

    kept, left_out = {}, []
    for label, config in methods.items():
        try:
            zoprune.prune(model, config)
        except (ConfigError, UnsupportedModelError) as error:
            left_out.append((label, str(error).split(". ")[0].split("; ")[0]))
            continue
        kept[label] = config
    return kept, left_out


def paired_table(comparisons, reference: str) -> Table:
    """Each method's difference to the reference at the same budget; * marks an interval that excludes 0."""
    table = Table(title=f"difference to {reference} at the same budget, question by question "
                        f"(* : the 95% interval excludes 0)")
    for column in ("method", "budget", "difference", "95% interval", "gained / lost", "McNemar p"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for c in comparisons:
        table.add_row(c.method, f"{c.budget}", f"{100 * c.difference:+.1f}{' *' if c.separated else '  '}",
                      f"{100 * c.low:+.1f} to {100 * c.high:+.1f}", f"{c.gained} / {c.lost}", format_p(c.p_value))
    return table


def format_p(p: float) -> str:
    """A p-value to 2 significant figures, small ones as "<0.0001"."""
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"


def require_matplotlib() -> None:
    """Fail with an error that says how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ZopruneError("the plot needs matplotlib: pip install 'zoprune[plot]', or pass --no-plot") from None
