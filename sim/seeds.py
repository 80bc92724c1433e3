"""Deterministic child seeds.

``SeedSequence.spawn`` numbers children by how many were spawned before, so calling it twice on
the same object gives different children. ``child(seq, i)`` is the i-th child whatever happened
before: the same (entropy, spawn key + (i,)) that the i-th ``spawn`` of a fresh sequence gives.
"""

from __future__ import annotations

import numpy as np

__all__ = ["child", "children"]


def child(seq: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """The ``index``-th child of ``seq``, independent of earlier ``spawn`` calls."""
    return np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, index),
                                  pool_size=seq.pool_size)


def children(seq: np.random.SeedSequence, n: int) -> list[np.random.SeedSequence]:
    """The first ``n`` children of ``seq`` (see :func:`child`)."""
    return [child(seq, i) for i in range(n)]
