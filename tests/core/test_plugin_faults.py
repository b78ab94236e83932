"""Misbehaving plugins installed as a user would install them (a distribution with ``zoprune`` entry points): each
failure is recorded with its plugin and distribution, leaves nothing half-registered, and the other plugins keep
working. (Two plugins claiming one name are tested with the registry.)"""

import textwrap

import pytest
import torch

import zoprune
from zoprune.errors import ConfigError, PluginError
from zoprune.registry import reload_registry
from tiny_models import llava_batch, tiny_llava

PLUGINS = {
    # registers a scorer, then its hook raises: the scorer must not stay registered
    "acme_half": """
        import torch, zoprune

        class Half(zoprune.Scorer):
            name = "acme_half"
            def score(self, tokens, ctx):
                return torch.zeros(tokens.num_tokens)

        @zoprune.hookimpl
        def register_scorers(register):
            register(Half)
            raise RuntimeError("boom while registering")
    """,
    "acme_import": """
        raise RuntimeError("import-time failure")
    """,
    "acme_not_a_component": """
        import zoprune

        @zoprune.hookimpl
        def register_selectors(register):
            register(object)
    """,
    "acme_good": """
        import torch, zoprune

        class FirstK(zoprune.Selector):
            name = "acme_first"
            needs_scores = False
            def select(self, scores, tokens, k, ctx):
                return torch.arange(k)

        @zoprune.hookimpl
        def register_selectors(register):
            register(FirstK)
    """,
}


@pytest.fixture
def acme(tmp_path, monkeypatch):
    """The acme-plugins distribution, installed on sys.path with a dist-info of entry points."""
    for module, source in PLUGINS.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    info = tmp_path / "acme_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[zoprune]\n" + "".join(f"{m} = {m}\n" for m in PLUGINS))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield reload_registry()
    finally:
        monkeypatch.undo()
        reload_registry()


def test_failing_plugins_are_named_and_leave_nothing_behind(acme):
    failures = acme.failures
    assert set(failures) == {"acme_half", "acme_import", "acme_not_a_component"}
    assert all(why.startswith("acme-plugins: ") for why in failures.values())
    assert "boom while registering" in failures["acme_half"]
    assert "import-time failure" in failures["acme_import"]
    assert "not a Selector" in failures["acme_not_a_component"]
    assert "acme_half" not in acme.components["scorer"]  # registered before the hook raised: removed again
    assert not acme.manager.has_plugin("acme_half")
    with pytest.raises(ConfigError, match=r"unknown scorer 'acme_half'.*acme_half \(acme-plugins: PluginError: "
                                          r".*boom while registering"):
        zoprune.PipelineConfig(scorer="acme_half")


def test_the_other_plugins_keep_working(acme):
    model = tiny_llava()
    inputs = llava_batch(model, [[6, 7]], [1])
    assert acme.get("selector", "acme_first").distribution == "acme-plugins"
    assert zoprune.prune(model, scorer=None, selector="acme_first", budget=3).select(**inputs)[0].kept.tolist() \
        == [0, 1, 2]
    assert zoprune.prune(model, budget=3).select(**inputs)[0].kept.numel() == 3  # the built-ins
    assert acme.get("selector", "stratified").distribution == "zoprune-example"  # another third party


def test_a_plugin_object_registered_directly_is_all_or_nothing():
    registry = zoprune.get_registry()

    class Half(zoprune.Selector):
        name = "test_half_registered"
        needs_scores = False

        def select(self, scores, tokens, k, ctx):
            return torch.arange(k)

    class Plugin:
        @staticmethod
        @zoprune.hookimpl
        def register_selectors(register):
            register(Half)
            raise KeyError("late failure")

    try:
        with pytest.raises(PluginError, match=r"plugin 'half' \(acme\) failed while registering its components: "
                                              r"KeyError"):
            registry.register_plugin(Plugin, "half", "acme")
        assert "test_half_registered" not in registry.components["selector"]
        assert not registry.manager.has_plugin("half")
    finally:
        reload_registry()
