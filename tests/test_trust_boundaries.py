"""Config files are data, checkpoints' own code never runs, and components come only from installed entry points
(docs/security.md)."""

import ast
import json
import shutil
import sys
from pathlib import Path

import pytest

import zoprune
from zoprune.errors import ConfigError, ZopruneError

ROOT = Path(__file__).resolve().parents[1]
MARKER_CODE = "from pathlib import Path\nPath({path!r}).write_text('code ran')\n"


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "budget: !!python/object/apply:os.system ['echo > {marker}']\n"),
    (".yaml", "!!python/object/new:subprocess.Popen [['touch', '{marker}']]\n"),
    (".yaml", "selector: !!python/name:os.system\n"),
    (".toml", 'selector = "__import__(\'os\').system(\'touch {marker}\')"\n'),
    (".json", '{{"scorer": {{"name": "zo_sensitivity", "step": "__import__(\'os\').system(\'touch {marker}\')"}}}}\n'),
])
def test_config_files_are_data(tmp_path, suffix, text):
    marker = tmp_path / "marker"
    path = tmp_path / f"config{suffix}"
    path.write_text(text.format(marker=marker))
    with pytest.raises(ConfigError):
        zoprune.PipelineConfig.load(path)
    assert not marker.exists()


def test_a_component_name_never_imports_a_module(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    (tmp_path / "zp_untrusted_module.py").write_text(MARKER_CODE.format(path=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("zp_untrusted_module", "zp_untrusted_module:Scorer", "zp_untrusted_module.Scorer"):
        with pytest.raises(ConfigError, match="unknown scorer"):
            zoprune.PipelineConfig(scorer=name)
    assert "zp_untrusted_module" not in sys.modules and not marker.exists()


BUILTINS = {"eval", "exec", "compile", "__import__"}  # called by bare name
QUALIFIED = {("importlib", "import_module"), ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
             ("torch", "load"), ("np", "load"), ("numpy", "load")}
UNSAFE_MODULES = {"pickle", "marshal", "shelve", "dill", "cloudpickle", "runpy"}


def test_the_library_executes_no_data():
    """No eval/exec/compile, no imports by name, no pickle, yaml.load or torch.load anywhere in the library or the
    built-in plugins. (Entry points' ``ep.load()`` is the one import of code, from installed distributions.)"""
    found = []
    for path in [*ROOT.glob("src/zoprune/**/*.py"), *ROOT.glob("plugins/zoprune_plugins/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                found += [(path.name, n) for n in names if n and n.split(".")[0] in UNSAFE_MODULES]
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in BUILTINS:
                    found.append((path.name, func.id))
                elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                        and (func.value.id, func.attr) in QUALIFIED:
                    found.append((path.name, f"{func.value.id}.{func.attr}"))
    assert not found, found
    assert "yaml.safe_load(text)" in (ROOT / "src/zoprune/config.py").read_text()


def checkpoint_with_code(tiny_checkpoint, tmp_path, model_type=None):
    """The tiny checkpoint, plus custom code that its config asks transformers to run (``auto_map``)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    marker = tmp_path / "code-ran"
    (folder / "custom_code.py").write_text(MARKER_CODE.format(path=str(marker)) +
                                           "from transformers import LlavaConfig as CustomConfig\n"
                                           "from transformers import LlavaForConditionalGeneration as CustomModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom_code.CustomConfig",
                          "AutoModelForImageTextToText": "custom_code.CustomModel"}
    if model_type:
        config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_a_checkpoints_code_does_not_run(tiny_checkpoint, tmp_path):
    from zoprune.loading import load_model

    folder, marker = checkpoint_with_code(tiny_checkpoint, tmp_path)
    model, _ = load_model(str(folder))  # a known family: transformers' own classes, the custom code ignored
    assert type(model).__module__.startswith("transformers.") and not marker.exists()
    folder, marker = checkpoint_with_code(tiny_checkpoint, tmp_path / "unknown", model_type="zp-custom-vlm")
    with pytest.raises(ZopruneError, match="could not load model"):
        load_model(str(folder))  # only its own code could load it: refused, not run
    assert not marker.exists()


def test_the_commands_have_no_option_that_trusts_remote_code():
    from zoprune.cli import app

    options = {param for info in app.registered_commands
               for param in info.callback.__code__.co_varnames[:info.callback.__code__.co_argcount]}
    assert not {o for o in options if "trust" in o or "remote" in o}
