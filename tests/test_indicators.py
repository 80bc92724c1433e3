"""Hypervolume and the reference point, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from search.config import SearchConfig
from search.evaluate import Evaluation
from search.indicators import hypervolume, normalise
from search.nsga import front_hypervolume


def ev(accuracy: float, latency_s: float, energy_j: float = 0.0,
       violation: float = 0.0) -> Evaluation:
    return Evaluation((), "d", "a", accuracy=accuracy, latency_s=latency_s,
                      mean_latency_s=latency_s, p95_latency_s=latency_s,
                      device_energy_j=energy_j, violation=violation,
                      status="ok" if violation == 0 else "infeasible")


def sweep_hypervolume_2d(points: list[tuple[float, float]]) -> float:
    """An independent 2-D hypervolume (minimisation, reference (1, 1)): sweep the second
    coordinate and add the rectangles between consecutive values."""
    pts = sorted((x, y) for x, y in points if x < 1 and y < 1)
    total, best = 0.0, 1.0
    for i, (x, y) in enumerate(pts):
        best = min(best, y)
        right = pts[i + 1][0] if i + 1 < len(pts) else 1.0
        total += (right - x) * (1.0 - best)
    return total


def test_two_objective_hypervolume_by_hand() -> None:
    """Catches an error axis not normalised by chance (0.9 for ten classes: with error 1 as the
    reference these points give 0.7515), a latency not divided by its reference, dominated
    points or points past the reference counted, and infeasible designs counted.

    Normalised (error / 0.9, latency / 1 s): B (0.5, 0.1), A (0.2, 0.2), C (0.1, 0.6); by
    latency strips: 0.1 x (1 - 0.5) + 0.4 x (1 - 0.2) + 0.4 x (1 - 0.1) = 0.05 + 0.32 + 0.36.
    """
    config = SearchConfig(hv_latency_ref_s=1.0)
    assert config.hv_reference() == (pytest.approx(0.9), 1.0, 1.0)
    evs = [ev(0.82, 0.2), ev(0.55, 0.1), ev(0.91, 0.6),
           ev(0.50, 0.5),  # dominated by the first
           ev(0.05, 0.01),  # worse than chance: past the reference point
           ev(0.99, 0.05, violation=1.0)]  # infeasible: counts for nothing
    assert front_hypervolume(evs, config) == pytest.approx(0.73, abs=1e-12)
    pts = normalise([(e.accuracy, e.latency_s) for e in evs[:5]], config.hv_reference())
    assert sweep_hypervolume_2d([tuple(p) for p in pts]) == pytest.approx(0.73, abs=1e-12)
    assert hypervolume(pts) == pytest.approx(0.73, abs=1e-12)
    # A configured error reference replaces chance: error 1 -> B (0.45, 0.1), A (0.18, 0.2),
    # C (0.09, 0.6), and the worse-than-chance design (0.95, 0.01) now counts too:
    # 0.09 x 0.05 + 0.1 x 0.55 + 0.4 x 0.82 + 0.4 x 0.91 = 0.7515.
    assert front_hypervolume(evs, config.with_changes(hv_error_ref=1.0)) == pytest.approx(
        0.7515, abs=1e-12)
    # The latency reference halves every latency coordinate at 2 s.
    two = config.with_changes(hv_latency_ref_s=2.0)
    half = [(e.accuracy, e.latency_s / 2) for e in evs[:5]]
    assert front_hypervolume(evs, two) == pytest.approx(
        sweep_hypervolume_2d([tuple(p) for p in normalise(half, config.hv_reference())]))


def test_three_objective_hypervolume_by_hand() -> None:
    """Catches an energy reference that is not applied (fixed at 1 J) and a union of boxes
    counted twice. Normalised with (0.9, 1 s, 2 J): P (0.5, 0.5, 0.5) and Q (0.75, 0.25, 0.75);
    boxes 0.125 and 0.046875 overlap in 0.25 x 0.5 x 0.25 = 0.03125: 0.140625."""
    config = SearchConfig(energy_objective=True, hv_energy_ref_j=2.0)
    p = ev(1 - 0.5 * 0.9, 0.5, 1.0)
    q = ev(1 - 0.75 * 0.9, 0.25, 1.5)
    assert front_hypervolume([p, q], config) == pytest.approx(0.140625, abs=1e-12)
    assert front_hypervolume([p], config) == pytest.approx(0.125, abs=1e-12)


def test_reference_point_is_checked() -> None:
    with pytest.raises(ValueError, match="reference"):
        normalise([(0.5, 0.1)], (0.9, 0.0))
    with pytest.raises(ValueError, match="hv_error_ref"):
        SearchConfig(hv_error_ref=1.5)
    assert math.isclose(SearchConfig().hv_reference(num_classes=100)[0], 0.99)
