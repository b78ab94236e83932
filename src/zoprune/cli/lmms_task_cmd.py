"""``zoprune lmms-task``: the shipped benchmark as an offline lmms-eval task folder."""

from __future__ import annotations

from pathlib import Path

import typer

from zoprune.cli.app import app, console, friendly_errors
from zoprune.cli.eval_cmd import HELD_OUT_SEED
from zoprune.errors import ZopruneError


@app.command("lmms-task", short_help="The shapes benchmark as an offline lmms-eval task.")
@friendly_errors
def lmms_task_command(
    folder: Path = typer.Argument(..., help="where to write the task folder (pass it to --include_path)"),
    n: int = typer.Option(1000, "--n", min=1, help="questions, the same ones `zoprune eval --n N` asks"),
    seed: int = typer.Option(HELD_OUT_SEED, "--seed", help="seed of the generated held-out set"),
    split: str = typer.Option("standard", "--split", help="standard or hard, as zoprune eval's --split"),
    name: str = typer.Option("zoprune_shapes", "--name", help="the task's name (--tasks NAME)"),
) -> None:
    """Write the shapes held-out set as an lmms-eval task: a YAML and a parquet file, no network needed."""
    from zoprune.integrations.lmms_eval_task import write_shapes_task
    from zoprune.shapes.data import SPLITS

    if split not in SPLITS:
        raise ZopruneError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")

    try:
        import datasets  # noqa: F401  (the task's parquet file is written with it)
    except ImportError as error:
        raise ZopruneError(f"writing the task needs `datasets` ({error}): pip install 'zoprune[lmms]'") from None
    with console.status(f"writing {n} questions"):
        task = write_shapes_task(folder, n, seed, name, split)
    console.print(f"wrote {task}", highlight=False)
    console.print(f"run: python -m lmms_eval --model zoprune --model_args method=zoo-prune,budget=16 "
                  f"--include_path {folder} --tasks {name} --batch_size 8 --output_path lmms-out", highlight=False,
                  soft_wrap=True)
