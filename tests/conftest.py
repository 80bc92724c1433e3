"""Shared fixtures: small scenarios built as dicts, so each test states what it varies."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim import Scenario, scenario_from_dict


@pytest.fixture(scope="session", autouse=True)
def _offline() -> Iterator[None]:
    """No test reaches the internet, module-scoped fixtures included (the experiments' shared
    quick run): a URL off the loopback fails as an unreachable host does, so ``dataset: auto``
    falls back instead of downloading on a machine without the data."""
    import urllib.error
    import urllib.parse
    import urllib.request

    real = urllib.request.urlopen

    def loopback_only(url: Any, *args: Any, **kwargs: Any) -> Any:
        target = url.full_url if isinstance(url, urllib.request.Request) else str(url)
        if urllib.parse.urlsplit(target).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise urllib.error.URLError(f"tests stay offline ({target})")
        return real(url, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(urllib.request, "urlopen", loopback_only)
        yield


EXAMPLES = Path(__file__).resolve().parent.parent / "experiments" / "scenarios"


@pytest.fixture(autouse=True)
def _fresh_dataset_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The data-set choice is not remembered from one test to the next."""
    import models.data

    monkeypatch.setattr(models.data, "_RESOLVED", {})


def single_queue(
    *,
    rate_hz: float,
    work_flops: float = 1.0,
    flops: float = 1.0,
    servers: int = 1,
    distribution: str = "exponential",
    cv: float = 0.5,
    tasks: int = 1000,
    warmup: int = 0,
) -> Scenario:
    """One node, Poisson arrivals: an M/M/c, M/D/c or M/G/c queue."""
    return scenario_from_dict({
        "name": "single-queue",
        "input_shape": [1],
        "nodes": {"server": {"kind": "device", "flops_per_s": flops, "servers": servers}},
        "path": ["server"],
        "workload": {"sources": ["server"], "arrivals": {"process": "poisson", "rate_hz": rate_hz},
                     "tasks": tasks, "warmup_tasks": warmup},
        "pipeline": [{"compute": "server", "flops": work_flops, "distribution": distribution,
                      "cv": cv}],
    })


THREE_TIER: dict[str, Any] = {
    "name": "three-tier-test",
    "input_shape": [3, 32, 32],
    "nodes": {
        "phone": {"kind": "device", "flops_per_s": 1e9, "power_w": 2.0},
        "edge": {"kind": "edge", "flops_per_s": 1e11, "servers": 2, "power_w": 100.0},
        "cloud": {"kind": "cloud", "flops_per_s": 1e12, "servers": 4},
    },
    "links": [
        {"src": "phone", "dst": "edge", "propagation_s": 0.001,
         "channel": {"model": "constant", "rate_bps": 10e6, "tx_power_w": 0.2}},
        {"src": "edge", "dst": "cloud", "propagation_s": 0.01,
         "channel": {"model": "constant", "rate_bps": 100e6}},
    ],
    "path": ["phone", "edge", "cloud"],
    "workload": {"sources": ["phone"], "arrivals": {"process": "poisson", "rate_hz": 5.0},
                 "tasks": 500, "warmup_tasks": 50},
    "pipeline": [
        {"compute": "phone", "flops": 2e7},
        {"transfer": ["phone", "edge"], "bits": 2e5},
        {"compute": "edge", "flops": 1e9},
        {"transfer": ["edge", "cloud"], "bits": 1e5},
        {"compute": "cloud", "flops": 1e9},
    ],
}


def three_tier(**changes: Any) -> dict[str, Any]:
    """A deep copy of THREE_TIER with top-level keys replaced."""
    d = copy.deepcopy(THREE_TIER)
    d.update(changes)
    return d


@pytest.fixture
def three_tier_dict() -> dict[str, Any]:
    return three_tier()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where CUDA is not available."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
