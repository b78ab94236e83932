"""``zoprune report``: lmms-eval results files as the paper's table, CSV/JSON and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table

from zoprune.cli.app import app, console, err_console, friendly_errors
from zoprune.cli.eval_cmd import require_matplotlib


@app.command("report", short_help="lmms-eval results as the paper's table.")
@friendly_errors
def report_command(
    paths: List[Path] = typer.Argument(..., help="lmms-eval output folders or *_results.json files"),
    out: Path = typer.Option(Path("zoprune-report"), "--out", help="folder for report.csv, report.json, report.png"),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="write report.png (needs matplotlib)"),
) -> None:
    """Per-task scores of every method and budget in lmms-eval results, their mean and the mean score relative to
    the unpruned run (method=unpruned) of the same model."""
    from zoprune.integrations.lmms_eval_results import (
        UNPRUNED, build_table, find_results, format_score, plot_table, read_run, summarize, write_table)

    if plot:
        require_matplotlib()
    runs = [read_run(path) for path in find_results(paths)]
    rows, columns, notes = build_table(runs)
    summary = summarize(runs)
    documents = ", ".join(f"{task} {'/'.join(map(str, ns))}" for task, ns in summary["documents"].items())
    title = f"lmms-eval results: {summary['files']} files; documents per task: {documents}"
    several_models = len({r.model for r in rows}) > 1
    # a mean of scores on different scales (MME's 0-2000 next to accuracies) says nothing: the CSV still has it
    same_scale = all(s is None or abs(s) <= 1 for r in rows for s in r.scores.values())
    table = Table(title=title)
    headers = (["model"] if several_models else []) + ["method", "budget", *(c.replace("/", "/\n") for c in columns),
                                                       *(["mean"] if same_scale else []), "relative"]
    for header in headers:
        table.add_column(header, justify="left" if header in ("model", "method") else "right", overflow="fold")
    for r in rows:
        relative = "100.0%" if r.method == UNPRUNED else (f"{100 * r.mean_relative:.1f}%"
                                                          if r.mean_relative is not None else "-")
        cells = [r.method, r.budget or "all", *(format_score(r.scores[c]) for c in columns),
                 *([format_score(r.mean)] if same_scale else []), relative]
        table.add_row(*([r.model] if several_models else []), *cells)
    console.print(table)
    for note in notes:
        err_console.print(f"note: {note}", highlight=False)
    written = write_table(rows, columns, out)
    if plot:
        written.append(plot_table(rows, out / "report.png", title="lmms-eval: " + ", ".join(columns)))
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
