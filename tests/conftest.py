import pytest
import torch

import zoprune
from zoprune.registry import reload_registry


@pytest.fixture
def scoreless_selector():
    """Registers, for one test, a selector that needs no scores (the first k tokens); yields its name."""

    class FirstK(zoprune.Selector):
        name = "test_first_k"
        needs_scores = False

        def select(self, scores, tokens, k, ctx):
            return torch.arange(k)

    class Plugin:
        @staticmethod
        @zoprune.hookimpl
        def register_selectors(register):
            register(FirstK)

    zoprune.get_registry().register_plugin(Plugin, "test_first_k")
    yield FirstK.name
    reload_registry()
