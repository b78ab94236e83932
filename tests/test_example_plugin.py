"""The example third-party plugin (plugins/examples/zoprune-example) used the ways a user would: through
`zoprune plugins` and as a registered method in `zoprune eval`. Its own tests, which the plugin guide shows, are in
plugins/examples/zoprune-example/tests; discovery and `prune` with inline dicts are in tests/core/test_registry.py;
`eval` with SCORER+SELECTOR is in tests/cli/test_eval_show.py.
"""

import json

from typer.testing import CliRunner

import zoprune
from zoprune.cli import app

runner = CliRunner()



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
