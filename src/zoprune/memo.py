"""What a PrunedModel and its budget twins share: the memo of the last inputs' visual tokens and scores, and the
projector copied to the scoring dtypes."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from zoprune.interfaces import ImageTokens


@dataclass(eq=False)
class _MemoEntry:
    """One input's visual tokens and the scores computed on them so far."""

    key: tuple
    inputs: tuple  # holds the keyed tensors, so their ids cannot be reused while the entry lives
    images: list[ImageTokens]
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # image index -> (N,) scores


class _Memo:
    """The last inputs' visual tokens and scores. Scores depend on the image and the seed, not on the budget, so a
    PrunedModel and its :meth:`PrunedModel.at_budget` twins share one memo and a budget sweep scores once.

    Safe to share between threads: an entry is keyed on the identity and in-place version of every input tensor
    (and holds those tensors, so no other tensor can take their ids while it is kept), and it is replaced whole
    under a lock, so a call either finds the entry of its own inputs or makes a new one; it never sees another
    request's tokens or scores. Two threads on the same input tensors share an entry and may both score an image:
    they compute the same scores (seeded per image), and either one is kept.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: _MemoEntry | None = None

    def __getstate__(self) -> dict:  # a copy (copy.deepcopy, pickle) starts empty, with a lock of its own
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def find(self, key: tuple) -> _MemoEntry | None:
        """The entry of ``key``; None on a miss (or when ``key`` is empty: inputs that cannot be compared)."""
        with self._lock:
            entry = self._entry
        return entry if key and entry is not None and entry.key == key else None

    def store(self, key: tuple, inputs: dict[str, Any], images: list[ImageTokens]) -> _MemoEntry:
        entry = _MemoEntry(key, tuple(inputs.values()), images)
        if key:
            with self._lock:
                self._entry = entry
        return entry

    @staticmethod
    def key_of(inputs: dict[str, Any]) -> tuple:
        # identity and in-place version of every tensor, and plain values: anything changed or new is a miss
        key = []
        for name, value in sorted(inputs.items()):
            if isinstance(value, torch.Tensor):
                key.append((name, id(value), value._version))
            elif isinstance(value, (int, float, str, bool, type(None))):
                key.append((name, value))
            else:
                return ()  # something we cannot compare: never reuse
        return tuple(key)


class _ProjectorCopies:
    """The projector copied to scoring dtypes, per (dtype, device); shared by budget twins, built once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._copies: dict[tuple[torch.dtype, torch.device], torch.nn.Module] = {}

    def __getstate__(self) -> dict:  # a copy starts empty (the copies are rebuilt on demand), with its own lock
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def get(self, projector: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        weight = next(projector.parameters())
        if weight.dtype == dtype:
            return projector
        key = (dtype, weight.device)  # the model may have moved since the copy was made
        with self._lock:
            if key not in self._copies:
                self._copies[key] = copy.deepcopy(projector).to(dtype).eval()
            return self._copies[key]
