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
