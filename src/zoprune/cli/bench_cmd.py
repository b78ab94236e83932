"""``zoprune bench``: pruning overhead, prefill, decoding, generation, memory and FLOPs against the unpruned model
and an oracle, on randomly initialised models of realistic shapes (see :mod:`zoprune.bench.speed`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from zoprune.cli.app import app, console, friendly_errors
from zoprune.loading import check_device
from zoprune.cli.output import print_table
from zoprune.errors import ZopruneError


@app.command(short_help="What pruning costs and saves in time, memory and FLOPs.")
@friendly_errors
def bench(
    preset: str = typer.Option("llava-1.5-7b", "--preset",
                               help="shapes: llava-1.5-7b (7B-wide LM, 1 of 32 layers, extrapolated), qwen2-0.5b "
                                    "(0.5B LM in full) or tiny"),
    methods: str = typer.Option("zoo,jacobian", "--methods",
                                help="comma-separated: aliases (zoo, jacobian, divprune, random, norm), "
                                     "method names (zoo-prune-fast), scorer+selector (none+divprune) or "
                                     "config files"),
    budgets: str = typer.Option("64", "--budgets", help="comma-separated visual tokens kept per image"),
    layers: int | None = typer.Option(None, "--layers", min=1, help="decoder layers built (default: preset's)"),
    new_tokens: int = typer.Option(8, "--new-tokens", min=2, help="tokens generated per run"),
    repeats: int = typer.Option(1, "--repeats", min=1, help="runs per phase; the median is reported"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
    dtype: str = typer.Option("float32", "--dtype", help="the model's dtype: float32, bfloat16 or float16 "
                                                        "(float16 is very slow on CPUs)"),
    seed: int = typer.Option(0, "--seed"),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="torch CPU threads for this run (default: torch's own); on cores shared "
                                            "with other work 1 avoids waiting for busy cores at every op"),
    png: Path | None = typer.Option(None, "--png", help="write a bar chart here (needs zoprune[plot])"),
    json_out: Path | None = typer.Option(None, "--json", help="write every measurement here"),
) -> None:
    """Measure what pruning costs and saves, as ratios to the unpruned model and to an oracle, in one run."""
    import dataclasses

    import torch
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from zoprune.bench.speed import PRESETS, plot, render_table, run_bench

    if preset not in PRESETS:
        raise ZopruneError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    shapes = PRESETS[preset]
    if layers is not None:
        shapes = dataclasses.replace(shapes, layers=layers)
    try:
        budget_list = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise ZopruneError(f"--budgets must be comma-separated integers, not {budgets!r}") from None
    if not budget_list or min(budget_list) < 1:
        raise ZopruneError("--budgets needs at least one budget of 1 or more tokens")
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    check_device(device)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ZopruneError(f"--dtype must be float32, bfloat16 or float16, not {dtype!r}")
    if threads is not None:
        torch.set_num_threads(threads)  # this command's own process: the library never changes it
    steps = 1 + len(method_list) * len(budget_list)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("starting", total=steps)

        def say(message: str) -> None:
            if message.endswith("scoring and selection") or message == "unpruned: prefill":
                progress.advance(task)
            progress.update(task, description=message)

        report = run_bench(shapes, method_list, budget_list, new_tokens=new_tokens, repeats=repeats,
                           device=device, seed=seed, progress=say, dtype=getattr(torch, dtype))
    print_table(console, render_table(report))
    scale = report.extrapolation()
    if scale != 1.0:
        console.print(f"[dim]'overhead / prefill at {shapes.full_layers} layers': overhead over the prefill "
                      f"extrapolated by FLOPs (x{scale:.1f} the measured prefill); "
                      f"'vs oracle at {shapes.full_layers} layers (est.)': "
                      f"(oracle's generate + overhead) / oracle's generate, with the oracle's prefill and decode "
                      f"scaled by FLOPs to {shapes.full_layers} layers; the other columns are as measured[/]")
    if png is not None:
        console.print(f"chart: {plot(report, png)}")
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        console.print(f"measurements: {json_out}")
