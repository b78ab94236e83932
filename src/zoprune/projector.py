"""Recognising the structure of a projection layer, so scorers can take shortcuts that give the same numbers."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# attribute names of Linear -> activation -> Linear projectors in transformers' model families
_MLP_NAMES = (("linear_1", "act", "linear_2"), ("fc1", "act", "fc2"), ("fc1", "act_fn", "fc2"))


@dataclass(frozen=True)
class MLPParts:
    """A projector of the form ``second(activation(first(x)))`` with two Linear layers."""

    first: nn.Linear  # d_v -> d_h
    activation: Callable[[torch.Tensor], torch.Tensor]  # element-wise
    second: nn.Linear  # d_h -> d_l


_PARTS: "weakref.WeakKeyDictionary[nn.Module, MLPParts | None]" = weakref.WeakKeyDictionary()


def mlp_parts(projector: nn.Module) -> MLPParts | None:
    """The two Linear layers and the activation of a Linear-activation-Linear projector, or None for any other.

    The answer is remembered per module (finding it runs a probe input through the projector).
    """
    if projector not in _PARTS:
        _PARTS[projector] = _find_mlp_parts(projector)
    return _PARTS[projector]


def _find_mlp_parts(projector: nn.Module) -> MLPParts | None:
    if isinstance(projector, nn.Sequential) and len(projector) == 3:
        first, activation, second = projector
        if isinstance(first, nn.Linear) and isinstance(second, nn.Linear) and not isinstance(activation, nn.Linear):
            return MLPParts(first, activation, second)
        return None
    children = dict(projector.named_children())
    for names in _MLP_NAMES:
        if set(children) == set(names):
            first, activation, second = (getattr(projector, name) for name in names)
            if isinstance(first, nn.Linear) and isinstance(second, nn.Linear):
                if not _forward_is_plain(projector, names):
                    return None
                return MLPParts(first, activation, second)
    return None


def _forward_is_plain(projector: nn.Module, names: tuple[str, str, str]) -> bool:
    # A module may hold the three layers yet do more in forward (a residual, a norm): check on a probe input.
    first, activation, second = (getattr(projector, name) for name in names)
    param = first.weight
    probe = torch.randn(2, first.in_features, generator=torch.Generator().manual_seed(0)).to(param)
    with torch.no_grad():
        return torch.allclose(projector(probe), second(activation(first(probe))), rtol=1e-4, atol=1e-5)
