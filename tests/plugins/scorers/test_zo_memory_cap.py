"""zo_sensitivity's memory cap: batches shrink (directions, then tokens) to fit; the scores do not change."""

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from zoprune_plugins.scorers.zo_sensitivity import (
    ZOSensitivityConfig,
    batch_shape,
    black_box_sensitivity,
    structured_sensitivity,
    unit_directions,
)

from zoprune.projector import mlp_parts


def test_batch_shape():
    assert batch_shape(64, 576, 16, 100, None) == (16, 576)  # no cap: chunk directions, every token
    assert batch_shape(4, 576, 16, 100, None) == (4, 576)  # never more than m
    assert batch_shape(64, 100, 16, 10, 100 * 10 * 5) == (5, 100)  # 5 directions fit
    assert batch_shape(64, 100, 16, 10, 100 * 10 // 4) == (1, 25)  # not even one: split the tokens
    assert batch_shape(64, 100, 16, 10, 1) == (1, 1)


def test_config_cap_is_validated():
    assert ZOSensitivityConfig().max_chunk_bytes == 256 * 2 ** 20
    assert ZOSensitivityConfig(max_chunk_bytes=None).max_chunk_bytes is None
    with pytest.raises(ValidationError):
        ZOSensitivityConfig(max_chunk_bytes=10)


@pytest.mark.parametrize("cap", [None, 2 ** 20, 4 * 2 ** 20])
def test_scores_do_not_depend_on_the_cap(cap):
    torch.manual_seed(0)
    proj = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 128))
    x = torch.randn(600, 32)
    u = unit_directions(12, 32, torch.Generator().manual_seed(0), torch.float32, torch.device("cpu"))
    with torch.no_grad():
        reference = black_box_sensitivity(x, proj, u, 0.01, chunk=12)
        fast = structured_sensitivity(x, mlp_parts(proj), u, 0.01, chunk=12, max_bytes=cap)
        slow = black_box_sensitivity(x, proj, u, 0.01, chunk=12, max_bytes=cap)
    torch.testing.assert_close(fast, reference, rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(slow, reference, rtol=1e-5, atol=1e-6)


def test_cap_bounds_the_batch_that_is_run():
    """With a 1 MiB cap, no second-layer product larger than the cap is formed."""
    torch.manual_seed(0)
    proj = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 256))
    x = torch.randn(2000, 32)
    u = unit_directions(8, 32, torch.Generator().manual_seed(0), torch.float32, torch.device("cpu"))
    sizes = []
    original = torch.Tensor.__matmul__

    def spy(a, b):
        out = original(a, b)
        sizes.append(out.numel() * out.element_size())
        return out

    torch.Tensor.__matmul__ = spy
    try:
        with torch.no_grad():
            structured_sensitivity(x, mlp_parts(proj), u, 0.01, chunk=8, max_bytes=2 ** 20)
    finally:
        torch.Tensor.__matmul__ = original
    assert max(sizes[1:]) <= 2 ** 20  # sizes[0] is W1 u (m x d_h), the rest the batched products
    assert len(sizes) > 2  # the cap forced several batches
