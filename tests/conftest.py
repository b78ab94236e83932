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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny LLaVA with its processor, saved so commands load it through from_pretrained as users do."""
    from tiny_models import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def sample_image(tmp_path_factory):
    """A 48x40 noise PNG."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "picture.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype("uint8")).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_vqa_jsonl(tmp_path_factory):
    """A 6-question JSONL data set of 32x32 noise images (kinds "colour" and "count"), for eval commands."""
    import json

    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": "what colour is the circle ?", "answer": "red",
                                 "kind": "colour" if i % 2 else "count"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl"
