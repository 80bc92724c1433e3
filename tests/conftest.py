"""Shared fixtures: small scenarios built as dicts, so each test states what it varies."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
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

# The suite runs on three pytest-xdist workers (pyproject.toml), so every test shares the cores
# with two other tests, as on a busy machine. A test that cannot share them (it compares a
# calibration taken before a run with the run itself, so a neighbour that starts or stops in
# between moves its result) asks for the machine to itself with ``alone()``: every test holds
# the machine lock shared while it runs (its function-scoped part: a module's fixture, such as
# the experiments' quick run, is made before the hold); ``alone`` waits for the other workers'
# tests to end, holds the lock whole, and their next tests wait for it. A turnstile
# lock taken before the shared one keeps the waiting ``alone`` from being overtaken.
_LOCKS: dict[str, int] = {}
_SHARED = [False]  # whether this worker's running test holds the lock shared


def _lock_files(factory: pytest.TempPathFactory) -> tuple[int, int] | None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return None  # one process: nothing beside it to wait for
    if not _LOCKS:  # in the run's temporary folder, which every worker's folder lies in
        folder = factory.getbasetemp().parent
        for part in ("turnstile", "machine"):
            _LOCKS[part] = os.open(folder / f"tests.{part}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    return _LOCKS["turnstile"], _LOCKS["machine"]


@contextlib.contextmanager
def alone(factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run the block with no other test of this run beside it (see above); ``factory``:
    pytest's ``tmp_path_factory``."""
    fds = _lock_files(factory)
    if fds is None:
        yield
        return
    turnstile, machine = fds
    fcntl.flock(machine, fcntl.LOCK_UN)  # this worker's own shared hold, if any
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    try:
        fcntl.flock(machine, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(machine, fcntl.LOCK_SH if _SHARED[0] else fcntl.LOCK_UN)
        fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _share_the_machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test holds the machine lock shared (see :func:`alone`)."""
    fds = _lock_files(tmp_path_factory)
    if fds is None:
        yield
        return
    turnstile, machine = fds
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    fcntl.flock(machine, fcntl.LOCK_SH)
    fcntl.flock(turnstile, fcntl.LOCK_UN)
    _SHARED[0] = True
    try:
        yield
    finally:
        _SHARED[0] = False
        fcntl.flock(machine, fcntl.LOCK_UN)


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


_LONGEST_FIRST = ("test_experiments.py", "test_search.py", "test_deploy_hosts.py",
                  "test_baselines.py", "test_deploy.py", "test_fuzz.py", "test_queueing.py")
"""The longest test files (about 240, 200, 85, 80, 90, 35 and 30 s alone on two cores). The
workers take whole files (``--dist loadfile``: a module's fixture is made once), in this order
first, so that none ends the run with a long file while the others wait (the fuzz file, left
to the end, once ran alone for its last 90 s)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first (:data:`_LONGEST_FIRST`); tests marked ``gpu`` skipped where
    CUDA is not available."""
    rank = {name: k for k, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as is
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
