"""`zoprune embed` on a tiny saved LLaVA: the file holds exactly what the pipeline feeds the language model."""

import torch
from typer.testing import CliRunner

import zoprune
from zoprune.cli import app
from zoprune.embeddings import load_embeddings

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_embed_writes_the_pipelines_embeddings_in_the_models_dtype(tiny_checkpoint, sample_image, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "embeds.safetensors"
    result = invoke("embed", "--model", tiny_checkpoint, "--image", sample_image, "--image", sample_image,
                    "--prompt", "what colour is the circle ?", "-m", "zoo-prune-fast", "--keep", 4,
                    "--dtype", "bfloat16", "--out", out)
    assert result.exit_code == 0, result.output
    assert "4 of 16 tokens kept, (4, 48) bfloat16" in result.output
    embeds, metadata = load_embeddings(out)
    assert metadata["prompt"].count("<image>") == 2 and metadata["question"] == "what colour is the circle ?"
    assert metadata["method"] == "zoo-prune-fast"

    model = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    picture = Image.open(sample_image).convert("RGB")
    inputs = processor(images=[picture, picture], text=[metadata["prompt"]], return_tensors="pt")
    expected = zoprune.prune(model, "configs/zoo_prune_fast.yaml", budget=4).embed(**inputs)
    assert len(embeds) == 2
    for ours, theirs in zip(embeds, expected):
        assert ours.embeddings.dtype == torch.bfloat16 and torch.equal(ours.embeddings, theirs.embeddings)
        assert torch.equal(ours.kept, theirs.kept) and ours.num_tokens == 16 and ours.kind == "image"


def test_embed_refuses_in_llm_methods_clearly(tiny_checkpoint, sample_image, tmp_path):
    result = invoke("embed", "--model", tiny_checkpoint, "--image", sample_image, "--prompt", "describe", "-m", "fastv",
                    "--out", tmp_path / "x.safetensors")
    assert result.exit_code == 2 and "inside the language model" in result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_embed_names_a_missing_image(tiny_checkpoint, tmp_path):
    result = invoke("embed", "--model", tiny_checkpoint, "--image", tmp_path / "nope.png", "--prompt", "describe",
                    "--out", tmp_path / "x.safetensors")
    assert result.exit_code == 2 and "image not found" in result.output
