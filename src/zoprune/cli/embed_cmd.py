"""``zoprune embed``: the pruned embeddings of images for a prompt, written to a file any server can take."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from zoprune.cli.app import app, console, friendly_errors
from zoprune.cli.loading import chosen_config
from zoprune.cli.options import (ConfigOption, DtypeOption, KeepOption, MethodOption, ModelOption,
                                 RatioOption)
from zoprune.loading import load_image, load_model, prompt_text


@app.command(short_help="Pruned image embeddings for a server (vLLM).")
@friendly_errors
def embed(
    image: List[Path] = typer.Option(..., "--image", help="image file; repeat for several images in one prompt"),
    prompt: str = typer.Option(..., "--prompt", help="the question: the prompt the images are pruned for (methods "
                               "that read the text use it)"),
    out: Path = typer.Option(..., "--out", help="safetensors file to write"),
    model: ModelOption = None,
    config: ConfigOption = None,
    method: MethodOption = None,
    keep: KeepOption = None,
    ratio: RatioOption = None,
    dtype: DtypeOption = "float32",
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Prune IMAGE's visual tokens for PROMPT and write, per image, the kept embeddings (k, d_l) in the model's
    dtype and the kept indices: exactly what `generate` feeds the language model (docs/serving.md)."""
    import zoprune
    from zoprune.embeddings import save_embeddings

    cfg = chosen_config(config, method, keep=keep, ratio=ratio)
    pictures = [load_image(path) for path in image]
    with console.status("loading model"):
        hf_model, processor = load_model(model, dtype=dtype, device=device)
    pruned = zoprune.prune(hf_model, cfg)
    text = prompt_text(processor, prompt, images=len(pictures))
    inputs = processor(images=pictures, text=[text], return_tensors="pt").to(device)
    embeds = pruned.embed(**inputs)
    save_embeddings(out, embeds, prompt=text, question=prompt, config=cfg.to_dict(), model=model or "shipped",
                    method=method or (str(config) if config else "default"), images=[str(path) for path in image])
    for e, path in zip(embeds, image):
        k, width = e.embeddings.shape
        console.print(f"{path}: {k} of {e.num_tokens} tokens kept, ({k}, {width}) "
                      f"{str(e.embeddings.dtype).removeprefix('torch.')}", highlight=False, soft_wrap=True)
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)
