"""``zoprune run``: answer one prompt about one image with a pruned model, and say what it cost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.text import Text

from zoprune.cli.app import app, console, friendly_errors
from zoprune.cli.loading import chosen_config, method_notes
from zoprune.cli.options import (ConfigOption, DtypeOption, KeepOption, MethodOption, ModelOption,
                                 RatioOption)
from zoprune.loading import check_device, load_image, load_model, prompt_text


@app.command(short_help="Answer a prompt about an image with a pruned model.")
@friendly_errors
def run(
    image: Path = typer.Option(..., "--image", help="image file"),
    prompt: str = typer.Option(..., "--prompt", help="the question or instruction"),
    model: ModelOption = None,
    config: ConfigOption = None,
    method: MethodOption = None,
    keep: KeepOption = None,
    ratio: RatioOption = None,
    positions: Optional[str] = typer.Option(None, "--positions", help="contiguous or original: rotary positions "
                                            "after pre-LLM pruning (overrides the config)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    compare: bool = typer.Option(False, "--compare", help="also answer with every token, for comparison"),
    dtype: DtypeOption = "float32",
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
) -> None:
    """Answer PROMPT about IMAGE with the visual tokens pruned; print the answer, tokens kept and time."""
    import zoprune

    cfg = chosen_config(config, method, keep=keep, ratio=ratio, **({"positions": positions} if positions else {}))
    check_device(device)
    if method is not None or config is not None:
        notes = method_notes(method or str(config), cfg, budget_given=keep is not None or ratio is not None)
        for note in notes:
            console.print(Text("note: ", style="yellow") + Text(note), highlight=False)
    picture = load_image(image)
    with console.status("loading model"):
        hf_model, processor = load_model(model, dtype=dtype, device=device)
    pruned = zoprune.prune(hf_model, cfg)
    inputs = processor(images=[picture], text=[prompt_text(processor, prompt)], return_tensors="pt").to(device)
    length = inputs["input_ids"].shape[1]
    generation = {"max_new_tokens": max_new_tokens, "do_sample": False}

    start = time.perf_counter()
    output = pruned.generate(**inputs, **generation)
    elapsed = time.perf_counter() - start
    answer = processor.batch_decode(output[:, length:], skip_special_tokens=True)[0].strip()
    selection = pruned.last_selection
    kept = sum(s.num_kept for s in selection)
    total = sum(s.num_tokens for s in selection)

    console.print(f"[bold]answer:[/] {answer}", highlight=False)
    console.print(f"visual tokens kept: {kept} / {total} ({100 * kept / max(total, 1):.1f}%) "
                  f"[dim]scorer={cfg.scorer.name if cfg.scorer else None} selector={cfg.selector.name}[/]")
    console.print(f"time: {elapsed:.3f} s (pruning and generation, {output.shape[1] - length} tokens)")
    if compare:
        start = time.perf_counter()
        with torch.no_grad():
            full = hf_model.generate(**inputs, **generation)
        full_time = time.perf_counter() - start
        full_answer = processor.batch_decode(full[:, length:], skip_special_tokens=True)[0].strip()
        console.print(f"[bold]unpruned answer:[/] {full_answer}", highlight=False)
        console.print(f"unpruned time: {full_time:.3f} s ({full_time / elapsed:.2f}x the pruned time)")
