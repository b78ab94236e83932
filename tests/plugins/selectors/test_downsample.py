"""downsample: the image shrunk before the vision tower (Qwen2-VL / 2.5-VL), refused on fixed-resolution LLaVA.

The Qwen image processor is built offline (``Qwen2VLImageProcessorPil``: no download, no torchvision) with the
tiny models' 2-pixel patches, so the pixel layout the adapter takes apart is the processor's own.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

import zoprune
from zoprune.errors import ConfigError
from zoprune_plugins.adapters.qwen_vl import patchify, unpatchify
from zoprune_plugins.selection.lattice import downsampled_grid
from tiny_families import BOS_ID, IMAGE_TOKEN_ID, VISION_END_ID, VISION_START_ID, tiny_qwen2_5_vl, tiny_qwen2_vl
from tiny_models import llava_batch, tiny_llava

LAYOUT = (3, 2, 2, 2)  # channels, temporal patch size, patch size, merge size of the tiny Qwen towers


def processor():
    return Qwen2VLImageProcessorPil(patch_size=2, merge_size=2, temporal_patch_size=2, min_pixels=16,
                                    max_pixels=64 * 64)


def picture(height, width, seed=0):
    """A smooth picture (so that resizing it twice or once gives nearly the same pixels)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    channels = [127 + 120 * np.sin(x / width * f1 * math.pi + y / height * f2 * math.pi)
                for f1, f2 in rng.uniform(0.5, 2, size=(3, 2))]
    return Image.fromarray(np.stack(channels, -1).astype("uint8"))


def normalised(image):
    mean, std = torch.tensor(processor().image_mean), torch.tensor(processor().image_std)
    pixels = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255
    return (pixels - mean[:, None, None]) / std[:, None, None]


def test_unpatchify_gives_back_the_processors_pixels():
    image = picture(16, 24)  # 16 x 24 is a multiple of 4 within the pixel limits: the processor does not resize
    out = processor()(images=[image], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 8, 12]]
    pixels = unpatchify(out["pixel_values"], 1, 8, 12, LAYOUT)  # (T, C, H, W): both temporal copies
    torch.testing.assert_close(pixels[0], normalised(image), atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[1], pixels[0])
    assert torch.equal(patchify(pixels, 1, LAYOUT), out["pixel_values"])


@pytest.mark.parametrize("rows, cols", [(24, 24), (8, 12), (3, 40), (40, 3), (1, 1), (17, 5)])
def test_the_shrunk_grid_holds_k_at_the_aspect_ratio(rows, cols):
    for k in range(1, rows * cols + 1):
        r, c = downsampled_grid(rows, cols, k)
        assert 1 <= r <= rows and 1 <= c <= cols and r * c >= k
        if k >= 4 and rows >= 4 and cols >= 4:  # not more than a row or column more than needed
            assert (r - 1) * c < k or r * (c - 1) < k
    assert downsampled_grid(24, 24, 64) == (8, 8) and downsampled_grid(24, 24, 16) == (4, 4)
    assert downsampled_grid(24, 24, 600) == (24, 24)


def qwen_inputs(images, text=(9, 10)):
    """One prompt per image: BOS, <vision_start>, the processor's placeholders, <vision_end>, text; left-padded."""
    out = processor()(images=images, return_tensors="pt")
    rows = [[BOS_ID, VISION_START_ID] + [IMAGE_TOKEN_ID] * (int(thw.prod()) // 4) + [VISION_END_ID] + list(text)
            for thw in out["image_grid_thw"]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, **out}


@pytest.mark.parametrize("family", [tiny_qwen2_vl, tiny_qwen2_5_vl])
def test_downsample_generates_with_k_tokens_per_image(family):
    model = family()
    inputs = qwen_inputs([picture(32, 48), picture(24, 24, seed=1)])  # 8 x 12 = 96 and 6 x 6 = 36 merged tokens
    pruned = zoprune.prune(model, {"scorer": None, "selector": "downsample"}, budget=10)
    out = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 2)
    assert torch.equal(out[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    selection = pruned.last_selection
    # 8 x 12 shrinks to 3 x 4 (12 >= 10 at ratio 2:3), 6 x 6 to 3 x 4 or 4 x 3; 10 tokens kept of each
    assert [s.grid for s in selection] == [downsampled_grid(8, 12, 10), downsampled_grid(6, 6, 10)]
    assert [s.num_tokens for s in selection] == [12, 12] and [s.num_kept for s in selection] == [10, 10]


def test_the_shrunk_image_is_the_processors_image_at_that_size():
    """The tower gets what the processor gives for the picture resized to the shrunk grid (up to the resampling
    filters: bilinear on the processor's pixels here, bicubic on the original there)."""
    model = tiny_qwen2_vl()
    big = picture(64, 64)
    inputs = qwen_inputs([big])  # 16 x 16 merged tokens
    pruned = zoprune.prune(model, {"scorer": None, "selector": "downsample"}, budget=16)
    shrunk = pruned.adapter.downsample(inputs, 16)
    assert shrunk["image_grid_thw"].tolist() == [[1, 8, 8]]  # 4 x 4 merged tokens
    assert int((shrunk["input_ids"] == IMAGE_TOKEN_ID).sum()) == 16
    direct = processor()(images=[big.resize((16, 16), Image.BILINEAR)], return_tensors="pt")
    assert direct["image_grid_thw"].tolist() == [[1, 8, 8]]
    difference = (shrunk["pixel_values"] - direct["pixel_values"]).abs()
    assert float(difference.mean()) < 0.05  # normalised pixels span about 4


def test_with_every_token_kept_nothing_is_resized():
    model = tiny_qwen2_vl()
    inputs = qwen_inputs([picture(16, 16)])  # 4 x 4 = 16 merged tokens
    pruned = zoprune.prune(model, {"scorer": None, "selector": "downsample"}, budget=16)
    shrunk = pruned.adapter.downsample(inputs, 16)
    assert torch.equal(shrunk["pixel_values"], inputs["pixel_values"])
    assert torch.equal(shrunk["input_ids"], inputs["input_ids"])


def test_fixed_resolution_llava_is_refused_with_the_reason_and_pool():
    model = tiny_llava()
    with pytest.raises(ConfigError, match=r"fixed-resolution.*`pool`"):
        zoprune.prune(model, {"scorer": None, "selector": "downsample"}, budget=4)
    pool = zoprune.prune(model, {"scorer": None, "selector": "pool"}, budget=4)  # what it names instead works
    pool.generate(**llava_batch(model, [[6]], [1]), max_new_tokens=1, do_sample=False)


def test_a_ratio_budget_is_refused():
    with pytest.raises(ConfigError, match="count budget"):
        zoprune.prune(tiny_qwen2_vl(), {"scorer": None, "selector": "downsample"}, budget=0.25)


def test_the_method_is_registered():
    from zoprune.methods import resolve_method

    _, config = resolve_method("downsample")
    assert config.selector.name == "downsample" and config.scorer is None


def test_an_images_shrinking_does_not_depend_on_its_batch_neighbours():
    model = tiny_qwen2_vl()
    pictures = [picture(32, 48), picture(24, 24, seed=1)]
    pruned = zoprune.prune(model, {"scorer": None, "selector": "downsample"}, budget=10)
    together = pruned.select(**qwen_inputs(pictures))
    alone = pruned.select(**qwen_inputs(pictures[1:]))
    assert together[1].grid == alone[0].grid and torch.equal(together[1].kept, alone[0].kept)
    with torch.no_grad():
        rows_together = pruned.embed(**qwen_inputs(pictures))[1].embeddings
        rows_alone = pruned.embed(**qwen_inputs(pictures[1:]))[0].embeddings
    torch.testing.assert_close(rows_together, rows_alone)


def test_a_ratio_budget_twin_is_refused_too():
    pruned = zoprune.prune(tiny_qwen2_vl(), {"scorer": None, "selector": "downsample"}, budget=10)
    with pytest.raises(ConfigError, match="count budget"):
        pruned.at_budget(0.5).select(**qwen_inputs([picture(16, 16)]))
