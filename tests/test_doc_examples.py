"""The documentation's examples run as shown: the getting-started commands and Python blocks (their printed
question is the one the next command asks, because the page fills it from the data generator), and the plugin
guide's code, pasted in order into one file."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from docs_pages import ROOT, code_blocks, page_markdown
from zoprune.shapes.data import make_example


def test_getting_started_scene_matches_its_question_and_runs(tmp_path):
    example = make_example(np.random.default_rng(1))
    (scene,) = [block for block in code_blocks("getting-started.md", "bash") if "scene.png" in block]
    assert f"# prints: {example.question} -> {example.answer}" in scene
    assert f'--prompt "{example.question}"' in scene  # the command asks what the scene was drawn for
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "COLUMNS": "100"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", scene], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"{example.question} -> {example.answer}"
    assert any(line.startswith("answer: ") for line in lines)
    assert "visual tokens kept: 16 / 144 (11.1%)" in result.stdout


def test_getting_started_python_runs(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the second block names configs/zoo_prune.yaml, relative to a clone
    namespace: dict = {}
    for block in code_blocks("getting-started.md", "python"):
        exec(compile(block, "getting-started.md", "exec"), namespace)
    example = make_example(np.random.default_rng(1))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{example.question} -> ") and printed[0].endswith(f"(expected {example.answer})")
    assert namespace["pruned"].config.budget.keep == 32


def test_pages_fill_every_shapes_example():
    for page in ("getting-started.md", "guides/writing-a-plugin.md"):
        assert "{{" not in page_markdown(page), page


EXAMPLE = ROOT / "plugins" / "examples" / "zoprune-example"
GUIDE = "guides/writing-a-plugin.md"


def test_plugin_guide_shows_a_complete_pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10: zoprune depends on tomli there
        import tomli as tomllib

    (pyproject,) = code_blocks(GUIDE, "toml")
    assert pyproject == (EXAMPLE / "pyproject.toml").read_text()  # the whole file, not a fragment
    data = tomllib.loads(pyproject)
    assert data["build-system"]["build-backend"] and data["build-system"]["requires"]
    assert data["project"]["name"] and data["project"]["version"] and "zoprune" in data["project"]["dependencies"]
    assert data["project"]["entry-points"]["zoprune"] == {"example": "zoprune_example"}
    assert data["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/zoprune_example"]


def test_plugin_guide_module_blocks_pasted_in_order_make_a_working_plugin():
    import pluggy

    from zoprune import hookspecs
    from zoprune.registry import Registry

    blocks = code_blocks(GUIDE, "python")
    module_blocks = blocks[:4]  # imports, scorer, selector, hooks
    source = (EXAMPLE / "src" / "zoprune_example" / "__init__.py").read_text()
    body = "".join(line + "\n" for line in source.split('"""\n', 1)[1].splitlines() if "--8<--" not in line)
    assert "\n".join(module_blocks).split() == body.split()  # the blocks are the whole module, in order
    namespace: dict = {"__name__": "pasted_plugin"}
    for block in module_blocks:  # each block runs after the ones before it, with no NameError
        exec(compile(block, GUIDE, "exec"), namespace)
    manager = pluggy.PluginManager("zoprune")
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager)
    plugin = type("Pasted", (), {k: staticmethod(v) for k, v in namespace.items() if k.startswith("register_")})
    registry.register_plugin(plugin, "pasted", "pasted-distribution")
    assert registry.get("scorer", "contrast").cls is namespace["Contrast"]
    assert registry.get("selector", "stratified").cls is namespace["Stratified"]
    assert registry.method("contrast-stratified").config == {"scorer": "contrast", "selector": "stratified"}


def test_plugin_guide_tests_are_the_example_plugins_test_file_and_the_adapter_sketch_runs():
    import zoprune

    blocks = code_blocks(GUIDE, "python")
    tests = next(block for block in blocks if "def test_" in block)
    assert tests == (EXAMPLE / "tests" / "test_zoprune_example.py").read_text()  # pytest runs that file
    assert "tiny_models" not in tests and "from zoprune.testing import" in tests
    (adapter,) = [block for block in blocks if "class MyVLMAdapter" in block]
    namespace: dict = {}
    exec(compile(adapter, GUIDE, "exec"), namespace)
    assert issubclass(namespace["MyVLMAdapter"], zoprune.ModelAdapter)


def test_plugin_guide_commands_run(tmp_path):
    (config,) = code_blocks(GUIDE, "yaml")
    (tmp_path / "contrast.yaml").write_text(config)
    make_example(np.random.default_rng(1)).image.save(tmp_path / "scene.png")  # getting started's scene
    commands = [block for block in code_blocks(GUIDE, "bash") if "--config contrast.yaml" in block][0]
    runnable = "\n".join(line for line in commands.splitlines() if line.startswith(("zoprune plugins", "zoprune run")))
    assert runnable.count("\n") == 1  # `zoprune eval` is left to tests/test_example_plugin.py: it takes minutes
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", runnable], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "  contrast  (scorer)" in result.stdout and "selector=stratified" in result.stdout
    assert "visual tokens kept: 32 / 144" in result.stdout


def test_the_testing_module_example_runs():
    import re

    import zoprune.testing

    (example,) = re.findall(r"```python\n(.*?)```", zoprune.testing.__doc__, re.S)
    namespace: dict = {}
    exec(compile(example, "zoprune.testing", "exec"), namespace)
    assert namespace["selection"].num_kept == 4 and namespace["selection"].num_tokens == 16


def test_readme_python_example_on_the_shipped_model_runs(capsys):
    import ast
    import re

    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "zoprune.shapes.model" in b]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    answers = ast.literal_eval(capsys.readouterr().out.strip())
    assert len(answers) == 2 and all(isinstance(a, str) and a.strip() for a in answers)
    assert [s.num_kept for s in namespace["pruned"].last_selection] == [16, 16]
    assert namespace["inputs"]["input_ids"].shape[0] == 2


def test_plugins_concept_page_example_runs_as_pasted():
    import zoprune

    (block,) = code_blocks("concepts/plugins.md", "python")
    namespace: dict = {}
    exec(compile(block, "concepts/plugins.md", "exec"), namespace)  # imports included: no NameError
    assert issubclass(namespace["Contrast"], zoprune.Scorer) and callable(namespace["register_scorers"])
