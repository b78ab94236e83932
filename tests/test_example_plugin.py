"""The example third-party plugin (plugins/examples/zoprune-example) used the ways a user would: by name from a
config file, through `zoprune plugins`, and as a registered method in `zoprune eval`. Discovery and `prune` with
inline dicts are in tests/core/test_registry.py; `eval` with SCORER+SELECTOR is in tests/cli/test_eval_show.py.

The part between the ``--8<--`` markers is included in docs/guides/writing-a-plugin.md.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

import zoprune
from zoprune.cli import app
from tiny_models import llava_batch, tiny_llava

runner = CliRunner()


# --8<-- [start:test]
def test_contrast_and_stratified_from_a_yaml_file(tmp_path):
    config = tmp_path / "contrast.yaml"
    config.write_text("scorer: {name: contrast, center: median, power: 2}\n"
                      "selector: {name: stratified, order: raster}\n"
                      "budget: 4\n")
    model = tiny_llava()  # a random 16-token-per-image LLaVA built in memory (tests/tiny_models.py)
    inputs = llava_batch(model, [[6, 7, 8]], [1])
    pruned = zoprune.prune(model, config)

    assert pruned.scorer.config.center == "median" and pruned.scorer.config.power == 2
    (selection,) = pruned.select(**inputs)
    # raster slices of 16 / 4 tokens: one kept token per row of the 4 x 4 grid, the most unusual of its row
    assert (selection.kept // 4).tolist() == [0, 1, 2, 3]
    scores = selection.scores.view(4, 4)
    assert selection.kept.tolist() == [4 * row + int(scores[row].argmax()) for row in range(4)]
    # the scores are squared distances from the median token (power: 2)
    embeddings = pruned.adapter.extract(inputs, pruned.adapter.projector(), torch.float32)[0].embeddings
    expected = (embeddings - embeddings.median(0).values).norm(dim=-1) ** 2
    torch.testing.assert_close(selection.scores, expected)


def test_a_bad_parameter_in_the_file_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("scorer: {name: contrast, power: 9}\nselector: stratified\n")
    with pytest.raises(zoprune.ConfigError, match=r"bad.yaml: .*scorer.power = 9: .*less than or equal to 4"):
        zoprune.PipelineConfig.load(config)
# --8<-- [end:test]


def test_plugins_command_lists_the_example_with_its_distribution():
    result = runner.invoke(app, ["plugins"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, kind in (("contrast", "scorer"), ("stratified", "selector"), ("contrast-stratified", "method")):
        at = lines.index(f"  {name}  ({kind})")
        origin = next(line for line in lines[at + 1:] if ", plugin " in line or line.startswith("      from "))
        assert origin.strip().endswith("from zoprune-example, plugin example"), origin


def test_the_method_is_registered_with_its_plugin():
    method = zoprune.get_registry().method("contrast-stratified")
    assert method.distribution == "zoprune-example" and method.plugin == "example"
    assert zoprune.get_registry().method_available("contrast-stratified") is None
    config = zoprune.PipelineConfig.from_dict(method.config)
    assert (config.scorer.name, config.selector.name) == ("contrast", "stratified")


def test_eval_by_method_name_and_by_config_file(tiny_checkpoint, tiny_vqa_jsonl, tmp_path):
    config = tmp_path / "column.yaml"
    config.write_text("scorer: {name: contrast, center: median}\nselector: {name: stratified, order: column}\n")
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--model", str(tiny_checkpoint), "--data", str(tiny_vqa_jsonl),
                                 "-m", "contrast-stratified", "-m", str(config), "-b", "4", "-b", "2",
                                 "--out", str(out), "--batch-size", "4", "--no-plot"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["budget"]) for r in rows] == [
        ("unpruned", None), ("contrast-stratified", 4), ("contrast-stratified", 2), ("column", 4), ("column", 2)]
    assert [r["kept_tokens"] for r in rows] == [16, 4, 2, 4, 2]
    assert all(r["total"] == 6 for r in rows)
