"""Quality of a front: hypervolume with a fixed normalised reference point, and IGD.

Objectives are turned into minimised, normalised coordinates by a reference point (an error, a
latency and, with the energy objective, an energy): (1 - accuracy) / error_ref, latency /
latency_ref_s, energy / energy_ref_j, so the reference point becomes (1, ..., 1). Points beyond it
add nothing. The search's default error reference is chance, 1 - 1/classes (0.9 for ten
classes): a design no better than guessing adds nothing, and the hypervolume spans 0 (nothing
better than chance or faster than the latency reference) to 1 (a perfect, instant design).

The indicators themselves are moocore's (Lopez-Ibanez et al.), which DEAP also uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
from numpy.typing import NDArray

__all__ = ["hypervolume", "igd", "nondominated", "normalise"]


def normalise(points: Sequence[Sequence[float]], reference: Sequence[float]
              ) -> NDArray[np.float64]:
    """(accuracy, latency[, energy]) rows -> minimised coordinates normalised by ``reference``
    = (error, latency_s[, energy_j]), the point that maps to (1, ..., 1)."""
    p = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.size < p.shape[1] or not np.all(ref > 0):
        raise ValueError(f"reference must have {p.shape[1]} values > 0, got {list(reference)}")
    out = np.empty_like(p)
    out[:, 0] = (1.0 - p[:, 0]) / ref[0]
    out[:, 1:] = p[:, 1:] / ref[1: p.shape[1]]
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
