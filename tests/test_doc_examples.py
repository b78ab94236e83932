"""The documentation's examples run as shown: the getting-started commands and Python blocks (their printed
question is the one the next command asks, because the page fills it from the data generator), and the plugin
guide's code, pasted in order into one file."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
