"""``zoprune show``: a picture of which patches each method keeps, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from zoprune.cli.app import app, console, friendly_errors
from zoprune.loading import load_image, load_model, prompt_text
from zoprune.methods import available_methods, resolve_method
from zoprune.errors import ZopruneError

DEFAULT_SHOW = ["zoo-prune", "divprune", "cls-attention", "random"]


@app.command(short_help="A picture of the patches each method keeps.")
@friendly_errors
def show(
    image: Path = typer.Option(..., "--image", help="image file"),
    prompt: str = typer.Option(..., "--prompt", help="the question"),
    method: Optional[List[str]] = typer.Option(
        None, "--method", "-m", help="method name, selector, SCORER+SELECTOR or config file; repeatable "
        "[default: zoo-prune, divprune, cls-attention, random where installed]"),
    config: Optional[List[Path]] = typer.Option(None, "--config", help="pipeline config file; repeatable"),
    keep: int = typer.Option(16, "--keep", min=1, help="visual tokens kept per image"),
    model: Optional[str] = typer.Option(None, "--model", help="checkpoint directory or hub id [default: shipped]"),
    out: Path = typer.Option(Path("kept.png"), "--out", help="PNG to write"),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", min=1),
) -> None:
    """Write a PNG of IMAGE with the kept patches highlighted, one panel per method, with each method's answer."""
    import zoprune

    from zoprune.cli.eval_cmd import require_matplotlib

    require_matplotlib()
    names = list(method or []) + [str(c) for c in (config or [])]
    if not names:
        names = [m for m in DEFAULT_SHOW if m in available_methods()]
    methods = [resolve_method(name) for name in names]
    picture = load_image(image)
    with console.status("loading model"):
        hf_model, processor = load_model(model)
    inputs = processor(images=[picture], text=[prompt_text(processor, prompt)], return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    panels = []
    for label, cfg in methods:
        pruned = zoprune.prune(hf_model, cfg, budget=keep)
        output = pruned.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = processor.batch_decode(output[:, length:], skip_special_tokens=True)[0].strip()
        selection = pruned.last_selection[0]
        if selection.grid is None:
            raise ZopruneError(f"the image's {selection.num_tokens} tokens do not form a patch grid to draw")
        panels.append((label, answer, selection))
        console.print(f"{label}: kept {selection.num_kept} / {selection.num_tokens}, answer: {answer}",
                      highlight=False)
    seen = model_view(inputs["pixel_values"][0], processor)
    draw_panels(seen, panels, out, title=prompt)
    console.print(f"wrote {out}", highlight=False)


def model_view(pixel_values, processor):
    """The image as the model saw it (resized, cropped), as an (H, W, 3) array in [0, 1]."""
    import numpy as np

    image_processor = getattr(processor, "image_processor", None)
    mean = np.array(getattr(image_processor, "image_mean", None) or [0.0, 0.0, 0.0])[:, None, None]
    std = np.array(getattr(image_processor, "image_std", None) or [1.0, 1.0, 1.0])[:, None, None]
    array = pixel_values.float().numpy() * std + mean  # (3, H, W)
    return np.clip(array.transpose(1, 2, 0), 0, 1)


def draw_panels(image, panels, out: Path, title: str = "") -> Path:
    """One panel per (label, answer, selection): dropped patches dimmed, kept ones outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    height, width = image.shape[:2]
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(3 * (len(panels) + 1), 3.4), dpi=120, squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for axis, (label, answer, selection) in zip(axes[1:], panels):
        rows, cols = selection.grid
        cell_h, cell_w = height / rows, width / cols
        kept = np.zeros(rows * cols, dtype=bool)
        kept[selection.kept.cpu().numpy()] = True
        dimmed = image.copy()
        mask = np.kron(kept.reshape(rows, cols), np.ones((int(round(cell_h)), int(round(cell_w))))).astype(bool)
        mask = mask[:height, :width]
        dimmed[~mask] = dimmed[~mask] * 0.25
        axis.imshow(dimmed)
        for index in np.flatnonzero(kept):
            r, c = divmod(int(index), cols)
            axis.add_patch(Rectangle((c * cell_w - 0.5, r * cell_h - 0.5), cell_w, cell_h, fill=False,
                                     edgecolor="yellow", linewidth=0.8))
        merged = selection.num_kept - int(kept.sum())  # merged tokens (VisionZip's contextual ones) have no patch
        count = f"{kept.sum()}+{merged} merged" if merged else f"{kept.sum()}"
        axis.set_title(f"{label} ({count}/{rows * cols})\nanswer: {answer}", fontsize=8)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.92) if title else (0, 0, 1, 1))  # room for the title above the panels
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out
