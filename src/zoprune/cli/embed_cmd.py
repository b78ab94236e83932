"""``zoprune embed``: the pruned embeddings of images for a prompt, written to a file any server can take."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from zoprune.cli.app import app, console, friendly_errors
from zoprune.cli.loading import chosen_config
from zoprune.loading import load_image, load_model, prompt_text


@app.command(short_help="Pruned image embeddings for a server (vLLM).")
@friendly_errors
def embed(
    image: List[Path] = typer.Option(..., "--image", help="image file; repeat for several images in one prompt"),
    prompt: str = typer.Option(..., "--prompt", help="the question: the prompt the images are pruned for (methods "
                               "that read the text use it)"),
    out: Path = typer.Option(..., "--out", help="safetensors file to write"),
    model: Optional[str] = typer.Option(None, "--model", help="checkpoint directory or hub id [default: shipped]"),
    config: Optional[Path] = typer.Option(None, "--config", help="pipeline config (YAML, TOML or JSON)"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="method name (`zoprune plugins` lists them), "
                                         "selector or SCORER+SELECTOR, instead of --config"),
    keep: Optional[int] = typer.Option(None, "--keep", help="visual tokens kept per image (overrides the config)"),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="fraction of visual tokens kept, in (0, 1]"),
    dtype: str = typer.Option("float32", "--dtype", help="model dtype: float32, bfloat16 or float16"),
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
