"""The registry: entry-point discovery, lookups by name, and plugins that fail to load."""

import importlib.metadata

import pytest
import torch

import zoprune
from zoprune.errors import PluginError
from zoprune.registry import load_registry
from tiny_models import llava_batch, tiny_llava


def test_builtins_come_from_entry_points_of_the_zoprune_distribution():
    registry = load_registry()
    for kind, name in [("scorer", "zo_sensitivity"), ("selector", "coverage"), ("selector", "topk"),
                       ("adapter", "llava")]:
        found = registry.get(kind, name)
        assert found.distribution == "zoprune"
        assert found.plugin == name  # the entry point's name
    assert not registry.failures


def test_external_plugin_is_discovered_and_used_by_name():
    # plugins/examples/zoprune-example is installed into the test environment like any third-party package
    registry = load_registry()
    contrast = registry.get("scorer", "contrast")
    stratified = registry.get("selector", "stratified")
    assert contrast.distribution == stratified.distribution == "zoprune-example"
    model = tiny_llava()
    inputs = llava_batch(model, [[6, 7, 8]], [1])
    pruned = zoprune.prune(model, {"scorer": {"name": "contrast", "center": "median"},
                                   "selector": {"name": "stratified", "order": "column"}, "budget": 4})
    pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    (selection,) = pruned.last_selection
    assert selection.kept.numel() == 4
    # stratified in column order keeps the best of each quarter of the columns: one token per 4x1 column block
    columns = (selection.kept % 4).tolist()
    assert sorted(columns) == [0, 1, 2, 3]
    with pytest.raises(zoprune.ConfigError, match="scorer.power"):
        zoprune.PipelineConfig(scorer={"name": "contrast", "power": 0})


def test_unknown_name_lists_known_ones():
    with pytest.raises(PluginError) as info:
        load_registry().get("scorer", "zoo")
    assert "unknown scorer 'zoo'" in str(info.value) and "zo_sensitivity" in str(info.value)


def test_broken_plugin_is_named_and_does_not_break_the_others(monkeypatch):
    real = importlib.metadata.entry_points

    def with_broken(**kwargs):
        found = list(real(**kwargs))
        if kwargs.get("group") == "zoprune":
            found.append(importlib.metadata.EntryPoint(name="broken_plugin", value="no_such_module_zp.sub",
                                                       group="zoprune"))
        return found

    monkeypatch.setattr(importlib.metadata, "entry_points", with_broken)
    registry = load_registry()
    assert "broken_plugin" in registry.failures and "ModuleNotFoundError" in registry.failures["broken_plugin"]
    assert registry.get("selector", "coverage").distribution == "zoprune"
    with pytest.raises(PluginError, match="broken_plugin.*no_such_module_zp"):
        registry.get("selector", "from_the_broken_plugin")


def test_registering_something_that_is_not_a_component_names_the_plugin():
    class Plugin:
        @staticmethod
        @zoprune.hookimpl
        def register_scorers(register):
            register(object)

    registry = load_registry()
    with pytest.raises(PluginError, match="'bad'.*not a Scorer"):
        registry.register_plugin(Plugin, "bad")


def test_a_selector_returning_bad_indices_is_named():
    class Unsorted(zoprune.Selector):
        name = "test_unsorted"
        needs_scores = False

        def select(self, scores, tokens, k, ctx):
            return torch.arange(k).flip(0)

    class Plugin:
        @staticmethod
        @zoprune.hookimpl
        def register_selectors(register):
            register(Unsorted)

    registry = zoprune.get_registry()
    registry.register_plugin(Plugin, "unsorted")
    try:
        model = tiny_llava()
        pruned = zoprune.prune(model, {"scorer": None, "selector": "test_unsorted", "budget": 3})
        with pytest.raises(PluginError, match="selector 'test_unsorted'.*sorted"):
            pruned.select(**llava_batch(model, [[6]], [1]))
    finally:
        from zoprune.registry import reload_registry

        reload_registry()


def _plugin_registering(kind: str, cls: type):
    """A plugin object whose one hook registers ``cls`` as a ``kind``."""

    def hook(register):
        register(cls)

    return type("Plugin", (), {f"register_{kind}s": staticmethod(zoprune.hookimpl(hook))})


def test_a_second_component_under_a_taken_name_raises_naming_both_plugins():
    class RivalNorm(zoprune.Scorer):
        name = "norm"

        def score(self, tokens, ctx):
            return torch.zeros(tokens.num_tokens)

    registry = load_registry()
    builtin = registry.get("scorer", "norm").cls
    with pytest.raises(PluginError) as info:
        registry.register_plugin(_plugin_registering("scorer", RivalNorm), "rival", "rival-distribution")
    message = str(info.value)
    assert "scorer name 'norm' is registered twice" in message
    assert "'norm' (zoprune)" in message and "'rival' (rival-distribution)" in message
    found = registry.get("scorer", "norm")  # the first registration stands
    assert found.cls is builtin and (found.plugin, found.distribution) == ("norm", "zoprune")


def test_the_same_class_registered_again_by_another_plugin_raises():
    # re-registering a built-in's own class under another plugin would silently take over its attribution
    registry = load_registry()
    topk = registry.get("selector", "topk")
    with pytest.raises(PluginError, match=r"selector name 'topk' is registered twice: by 'topk' \(zoprune\) and "
                                          r"by 'copycat' \(copycat-distribution\)"):
        registry.register_plugin(_plugin_registering("selector", topk.cls), "copycat", "copycat-distribution")
    assert registry.get("selector", "topk") == topk


def test_a_plugin_repeating_its_own_registration_is_harmless():
    class Twice(zoprune.Selector):
        name = "test_twice"
        needs_scores = False

        def select(self, scores, tokens, k, ctx):
            return torch.arange(k)

    class Plugin:
        @staticmethod
        @zoprune.hookimpl
        def register_selectors(register):
            register(Twice)
            register(Twice)

    registry = load_registry()
    registry.register_plugin(Plugin, "twice")
    assert registry.get("selector", "test_twice").cls is Twice


def test_an_installed_plugin_reusing_a_taken_name_is_reported_and_the_first_one_kept(monkeypatch, tmp_path):
    # a third-party distribution shipping a selector named like a built-in: reported, never a silent replacement
    (tmp_path / "rival_plugin_zp.py").write_text(
        "import torch\nimport zoprune\n\n"
        "class Rival(zoprune.Selector):\n    name = 'coverage'\n    needs_scores = False\n\n"
        "    def select(self, scores, tokens, k, ctx):\n        return torch.arange(k)\n\n"
        "@zoprune.hookimpl\ndef register_selectors(register):\n    register(Rival)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = importlib.metadata.entry_points

    def with_rival(**kwargs):
        found = list(real(**kwargs))
        if kwargs.get("group") == "zoprune":
            found.append(importlib.metadata.EntryPoint(name="rival", value="rival_plugin_zp", group="zoprune"))
        return found

    monkeypatch.setattr(importlib.metadata, "entry_points", with_rival)
    registry = load_registry()
    assert "selector name 'coverage' is registered twice: by 'coverage' (zoprune) and by 'rival'" in (
        registry.failures["rival"])
    found = registry.get("selector", "coverage")
    assert (found.plugin, found.distribution) == ("coverage", "zoprune") and found.cls.__name__ != "Rival"
