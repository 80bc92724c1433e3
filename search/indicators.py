"""Quality of a front: hypervolume with a fixed normalised reference point, and IGD.

Objectives are turned into minimised, normalised coordinates: error = 1 - accuracy, and
latency / ``latency_ref_s``; the reference point is (1, 1) (and 1 for normalised energy, by
``energy_ref_j``). Points beyond the reference point add nothing. The indicators themselves are
moocore's (Lopez-Ibanez et al.), which DEAP also uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
from numpy.typing import NDArray

__all__ = ["hypervolume", "igd", "nondominated", "normalise"]


def normalise(points: Sequence[Sequence[float]], latency_ref_s: float,
              energy_ref_j: float = 1.0) -> NDArray[np.float64]:
    """(accuracy, latency[, energy]) rows -> minimised, normalised coordinates."""
    p = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    out = np.empty_like(p)
    out[:, 0] = 1.0 - p[:, 0]
    out[:, 1] = p[:, 1] / latency_ref_s
    if p.shape[1] > 2:
        out[:, 2] = p[:, 2] / energy_ref_j
    return out


def nondominated(points: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Mask of the rows no other row dominates (minimisation)."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(points), dtype=bool)


def hypervolume(points: NDArray[np.float64]) -> float:
    """Hypervolume of normalised points with the reference point (1, ..., 1)."""
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return 0.0
    p = p[np.all(p < 1.0, axis=1) & np.all(np.isfinite(p), axis=1)]
    if len(p) == 0:
        return 0.0
    return float(moocore.hypervolume(p, ref=np.ones(p.shape[1])))


def igd(points: NDArray[np.float64], reference_front: NDArray[np.float64]) -> float:
    """Inverted generational distance of ``points`` to the true ``reference_front``."""
    return float(moocore.igd(np.asarray(points), ref=np.asarray(reference_front)))
