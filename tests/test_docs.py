"""The documentation site builds with `mkdocs build --strict`, its generated references follow the code, and the
JSON Schema of config files accepts the shipped configs and rejects bad ones."""

import json
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from pydantic import Field
from typer.testing import CliRunner

import zoprune
from zoprune.cli import app
from zoprune.reference import cli_reference, config_reference, pipeline_schema
from zoprune.registry import reload_registry
from zoprune.shapes.data import make_example

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def mkdocs_build(config: Path, site: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    result = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr[-4000:]
    return site


def page(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text()


def text(html: str) -> str:
    """What a reader sees: tags (code highlighting splits code into spans) removed, entities decoded."""
    return unescape(re.sub(r"<[^>]+>", "", html))


def test_generated_references_list_every_registered_component(site):
    registry = zoprune.get_registry()
    config_page = page(site, "reference/config")
    for reg in registry.restricted_to({"zoprune"}).all():
        assert f'id="{reg.name}' in config_page, reg.name  # a heading per component
        for parameter in reg.cls.Config.model_fields:
            assert f"<code>{parameter}</code>" in config_page, (reg.name, parameter)
    # the site documents zoprune's own components, whatever the builder installed (the test extra installs the
    # example plugin); `zoprune schema --reference` is the page for an installation with plugins
    assert "contrast" not in config_page and "zoprune-example" not in config_page
    assert "zoprune schema --reference" in config_page
    schema = json.loads((site / "reference/zoprune.schema.json").read_text())
    own = registry.restricted_to({"zoprune"})
    assert schema == pipeline_schema(own) and "scorer.contrast" not in schema["$defs"]
    assert "scorer.contrast" in pipeline_schema()["$defs"]
    cli_page = page(site, "reference/cli")
    for info in app.registered_commands:
        name = info.name or info.callback.__name__
        assert f"zoprune {name}" in cli_page


def test_pages_include_the_real_code_and_the_api_reference(site):
    guide = page(site, "guides/writing-a-plugin")
    source = (ROOT / "plugins/examples/zoprune-example/src/zoprune_example/__init__.py").read_text()
    scorer = source.split("# --8<-- [start:scorer]\n")[1].split("# --8<-- [end:scorer]")[0]
    assert scorer.strip() in text(guide)  # the example package's code, verbatim
    assert "register_methods" in guide and "test_contrast_and_stratified" in guide
    assert "--8&lt;--" not in guide  # the snippet markers themselves are stripped
    readme = (ROOT / "README.md").read_text()
    test_command = readme.split("<!-- test-command -->")[1].split("```bash\n")[1].split("\n```")[0]
    assert test_command in text(page(site, "getting-started"))  # the README's commands, included verbatim
    example = make_example(np.random.default_rng(1))
    assert f'--prompt "{example.question}"' in text(page(site, "getting-started"))  # filled by the hook
    assert "shapes_example(" not in page(site, "getting-started")
    api = page(site, "reference/api")
    assert ":class:" not in api
    assert "Results" in page(site, "accuracy") and "0.1.0" in page(site, "changelog")


def test_every_public_name_has_a_rendered_api_entry(site):
    api = page(site, "reference/api")
    for name in zoprune.__all__:
        assert f'id="zoprune.{name}"' in api, name
    # pydantic models are documented by their fields, not as ``(**data)``
    for model, fields in ((zoprune.PipelineConfig, 7), (zoprune.Budget, 2)):
        assert len(model.model_fields) == fields
        for field in model.model_fields:
            assert f'id="zoprune.{model.__name__}.{field}"' in api, (model.__name__, field)
    assert 'id="zoprune.PrunedModel.last_selection"' in api
    # the class attributes a plugin author sets (the plugin guide explains them)
    for attribute in ("Scorer.requires", "Selector.needs_scores", "Selector.stage", "Selector.merges",
                      "Selector.requires", "ModelAdapter.provides", "ModelAdapter.model_classes", "Scorer.name"):
        assert f'id="zoprune.{attribute}"' in api, attribute
    # the package docstring's example is a code block, one statement per line
    blocks = [text(b) for b in re.findall(r"<pre\b.*?</pre>", api, re.S)]
    assert any("import zoprune\npruned = zoprune.prune(model" in b for b in blocks), blocks[:3]
    hooks = page(site, "reference/api/hookspecs")
    assert "::" not in text(hooks).replace("std::", "")
    assert any("[project.entry-points.zoprune]" in text(b) for b in re.findall(r"<pre\b.*?</pre>", hooks, re.S))


def test_navigation_titles_are_short_and_identifiers_in_tables_stay_whole(site):
    home = (site / "index.html").read_text()
    titles = [" ".join(text(t).split()) for t in re.findall(r'<span class="md-ellipsis">(.*?)</span>', home, re.S)]
    assert len(titles) > 20 and "ZOO-Prune" in titles
    long = [t for t in titles if len(t) > 26]
    assert not long, long  # longer ones wrap to two or three lines in the sidebar
    assert 'href="stylesheets/extra.css"' in home
    assert "white-space: nowrap" in (site / "stylesheets" / "extra.css").read_text()


def tiny_site(tmp_path: Path, pages: dict[str, str]) -> Path:
    """A small site with the real site's plugins, Markdown extensions and validation settings (not its hooks, so
    it builds in a second or two), with ``other.md`` to link to besides the given pages."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(tmp_path / "docs")
    del config["hooks"]
    python = config["plugins"][-1]["mkdocstrings"]["handlers"]["python"]
    python["paths"] = [str(ROOT / p) for p in python["paths"]]
    snippets = next(e for e in config["markdown_extensions"] if isinstance(e, dict) and "pymdownx.snippets" in e)
    snippets["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "other.md").write_text("# Other\n\n## Section\n\nText.\n")
    for name, markdown in pages.items():
        (docs / name).write_text(f"# {name}\n\n{markdown}\n")
    (docs / ".nav.yml").write_text("nav:\n  - glob: '*.md'\n    ignore_no_matches: true\n")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return tmp_path / "mkdocs.yml"


def test_strict_build_fails_on_broken_links_anchors_and_references(tmp_path):
    pages = {"index.md": "[gone](no-such-page.md)", "anchor.md": "[gone](other.md#no-such-anchor)",
             "xref.md": "[gone][zoprune.NoSuchThing]"}
    result = mkdocs_build(tiny_site(tmp_path, pages), tmp_path / "site", cwd=tmp_path)
    assert result.returncode != 0
    for message in ("no-such-page.md", "no-such-anchor", "zoprune.NoSuchThing"):
        assert message in result.stderr, message


@pytest.mark.parametrize("markdown, message", [
    ('--8<-- "plugins/examples/zoprune-example/src/zoprune_example/__init__.py:no-such-section"', "no-such-section"),
    ("::: zoprune.no_such_module", "no_such_module"),
])
def test_strict_build_fails_on_missing_snippets_and_objects(tmp_path, markdown, message):
    result = mkdocs_build(tiny_site(tmp_path, {"index.md": markdown}), tmp_path / "site", cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_a_valid_tiny_site_builds(tmp_path):
    # the control for the two tests above: the same set-up with good links, snippets and objects passes
    pages = {"index.md": "[section](other.md#section) [Scorer][zoprune.Scorer]\n\n::: zoprune.Scorer\n\n"
             '```python\n--8<-- "plugins/examples/zoprune-example/src/zoprune_example/__init__.py:scorer"\n```'}
    result = mkdocs_build(tiny_site(tmp_path, pages), tmp_path / "site", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ContrastConfig" in (tmp_path / "site" / "index.html").read_text()


# -- the JSON Schema ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator():
    schema = pipeline_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_accepts_every_shipped_config(validator, tmp_path):
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        data = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(data)), path.name
        zoprune.PipelineConfig.from_dict(data)  # and zoprune agrees
    saved = tmp_path / "defaults.json"
    zoprune.PipelineConfig(adapter={"name": "llava_next", "budget_policy": "per_tile"}).save(saved)
    assert not list(validator.iter_errors(json.loads(saved.read_text())))
    for good in ({}, {"budget": 0.25}, {"budget": {"ratio": 1}}, {"scorer": "none", "selector": "random"},
                 {"scorer": {"name": "contrast", "center": "median"}, "selector": {"name": "stratified"}}):
        assert not list(validator.iter_errors(good)), good


@pytest.mark.parametrize("bad", [
    {"scorer": {"name": "zo_sensitivity", "directions": 0}},  # out of range
    {"scorer": {"name": "zo_sensitivity", "stepp": 0.1}},  # unknown parameter
    {"scorer": {"name": "contrast", "directions": 8}},  # another component's parameter
    {"selector": {"name": "coverage", "fusion": "max"}},  # not one of the allowed values
    {"selector": "no_such_selector"},
    {"selector": {"fusion": "sum"}},  # no name
    {"adapter": {"name": "llava_next", "budget_policy": "sometimes"}},
    {"budget": 0},
    {"budget": 1.5},
    {"budget": {"keep": 8, "ratio": 0.5}},
    {"budget": {}},
    {"seed": "zero"},
    {"scoring_dtype": "int8"},
    {"unknown_key": 1},
])
def test_schema_rejects_what_zoprune_rejects(validator, bad):
    assert list(validator.iter_errors(bad))
    with pytest.raises(zoprune.ConfigError):
        zoprune.PipelineConfig.from_dict(bad)


def test_schema_reference_lists_every_installed_component_and_method():
    result = CliRunner().invoke(app, ["schema", "--reference"])
    assert result.exit_code == 0, result.output
    assert result.output == config_reference()
    for reg in zoprune.get_registry().all():
        assert f"### `{reg.name}`" in result.output, reg.name
    assert "`zoprune-example`" in result.output and "`contrast-stratified`" in result.output


def test_schema_command_prints_and_writes_the_schema(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == pipeline_schema()
    out = tmp_path / "nested" / "zoprune.schema.json"
    result = runner.invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0 and json.loads(out.read_text()) == pipeline_schema()


def test_a_newly_registered_component_appears_in_schema_and_reference():
    class SharpnessConfig(zoprune.ComponentConfig):
        radius: int = Field(default=3, ge=1, le=9, description="neighbourhood radius in patches")

    class Sharpness(zoprune.Scorer):
        """Test scorer: local contrast."""

        name = "test_sharpness"
        Config = SharpnessConfig

        def score(self, tokens, ctx):
            return tokens.embeddings.norm(dim=-1)

    class Plugin:
        @staticmethod
        @zoprune.hookimpl
        def register_scorers(register):
            register(Sharpness)

    zoprune.get_registry().register_plugin(Plugin, "test_sharpness", "test-distribution")
    try:
        reference = config_reference()
        section = reference.split("### `test_sharpness`")[1].split("###")[0]
        assert "Test scorer: local contrast." in section and "`test-distribution`" in section
        assert "| `radius` | `int` | `3` | >= 1, <= 9 | neighbourhood radius in patches |" in section
        validator = jsonschema.Draft202012Validator(pipeline_schema())
        assert not list(validator.iter_errors({"scorer": {"name": "test_sharpness", "radius": 9}}))
        assert list(validator.iter_errors({"scorer": {"name": "test_sharpness", "radius": 10}}))
    finally:
        reload_registry()
    assert "test_sharpness" not in config_reference()


def test_cli_reference_is_each_commands_help():
    text = cli_reference()
    assert "Usage: zoprune run [OPTIONS]" in text and "--keep" in text and "--compare" in text
    assert "Usage: zoprune eval [OPTIONS]" in text and "--budget" in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_links_to_repository_files_outside_docs(tmp_path):
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("zoprune_docs_hooks", ROOT / "docs_tools" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = SimpleNamespace(file=SimpleNamespace(src_uri="guides/page.md"))
    markdown = ("[the adapter](../../plugins/zoprune_plugins/adapters/llava.py) [gone](../../no/such/file.py) "
                "[inside](../concepts/config.md) [web](https://example.org/x.md)")
    config = {"docs_dir": str(ROOT / "docs"), "repo_url": ""}
    assert hooks.on_page_markdown(markdown, page, config, None) == (
        "the adapter [gone](../../no/such/file.py) [inside](../concepts/config.md) [web](https://example.org/x.md)")
    config["repo_url"] = "https://github.com/owner/zoprune/"
    assert hooks.on_page_markdown(markdown, page, config, None).startswith(
        "[the adapter](https://github.com/owner/zoprune/blob/main/plugins/zoprune_plugins/adapters/llava.py) [gone]")
    html = ":class:<code>~zoprune.Budget</code>"
    assert hooks.on_page_content(html, None, None, None) == "<code>zoprune.Budget</code>"


def test_pictures_live_in_one_folder():
    pictures = [p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*")
                if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg", ".gif")]
    assert pictures and all(p.parts[0] == "images" for p in pictures), pictures
