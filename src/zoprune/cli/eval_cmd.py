"""``zoprune eval``: accuracy of pruning methods at several budgets, as a table, CSV/JSON and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from zoprune.cli.app import app, console, friendly_errors
from zoprune.cli.output import print_table
from zoprune.cli.loading import (available_methods, check_device, load_model, method_notes, prompt_text,
                                 resolve_method)
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
    positions: Optional[str] = typer.Option(
        None, "--positions", help="contiguous or original: rotary positions after pre-LLM pruning, for every "
        "method [default: each method's config]"),
    batch_size: int = typer.Option(50, "--batch-size", min=1),
    out: Path = typer.Option(Path("zoprune-eval"), "--out",
                             help="folder for results.csv, results.json (with each method's whole config), "
                                  "accuracy.png"),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="write accuracy.png (needs matplotlib)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
) -> None:
    """Accuracy of each method at each budget against the unpruned model, on the same questions."""
    from zoprune.evaluation import evaluate, load_jsonl, plot_results, shapes_examples, write_results

    budgets = budget or DEFAULT_BUDGETS
    if any(b < 1 for b in budgets):
        raise ZopruneError(f"budgets must be at least 1 token, got {sorted(budgets)}")
    resolved = [(m, *resolve_method(m)) for m in (method or available_methods())]
    methods = {label: config for _, label, config in resolved}
    if positions is not None:
        from zoprune.pipeline import resolve_config

        methods = {label: resolve_config(config, positions=positions) for label, config in methods.items()}
    notes = [note for text, _, config in resolved for note in method_notes(text, config, budget_given=True)]
    if plot:
        require_matplotlib()
    check_device(device)
    with console.status("loading model and data"):
        hf_model, processor = load_model(model, device=device)
        if data is not None:
            examples, source = load_jsonl(data), str(data)
        elif model is None:
            examples, source = shapes_examples(n, seed), f"shapes held-out set ({n} questions, seed {seed})"
        else:
            raise ZopruneError("--data is required with --model: the generated shapes set only suits the shipped "
                               "model")

    console.print(f"[bold]data:[/] {source}   [bold]methods:[/] {', '.join(methods)}   "
                  f"[bold]budgets:[/] {', '.join(map(str, budgets))}", highlight=False)
    for note in notes:
        console.print(Text("note: ", style="yellow") + Text(note), highlight=False)
    runs = 1 + len(methods) * len(budgets)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("evaluating", total=runs * len(examples))
        results = evaluate(hf_model, processor, examples, methods, budgets, lambda q: prompt_text(processor, q),
                           batch_size=batch_size, on_batch=lambda count: progress.advance(task, count), device=device)

    table = Table(title=f"accuracy on {source}")
    for column in ("method", "kept / image", "accuracy", "95% interval", "relative"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in results:
        table.add_row(r.method, f"{r.kept_tokens:g} / {r.total_tokens:g}", f"{100 * r.accuracy:.1f}%",
                      f"{100 * r.ci_low:.1f} - {100 * r.ci_high:.1f}",
                      f"{100 * r.relative:.1f}%" if r.relative is not None else "-")
    print_table(console, table)
    written = write_results(results, out)
    if plot:
        written.append(plot_results(results, out / "accuracy.png", title=f"accuracy on {source}"))
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)


def require_matplotlib() -> None:
    """Fail with an error that says how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ZopruneError("the plot needs matplotlib: pip install 'zoprune[plot]', or pass --no-plot") from None
