"""Proxy training: determinism, failures reported not raised, accuracy and ranking on mnist5k."""

from __future__ import annotations

import math

import pytest
import torch

from models.build import Cut
from models.data import load_dataset
from models.space import get_space
from models.spec import ArchSpec, Conv, Head, Pool
from models.train import ProxyBudget, proxy_accuracy, resolve_device

SMALL = ProxyBudget(epochs=2, subset=600, width_scale=0.5, batch_size=32)


def tiny_arch() -> ArchSpec:
    return ArchSpec("small-cnn", (Conv(8), Pool(), Conv(16, stride=2), Head()))


def test_same_seed_same_accuracy_and_global_rng_untouched() -> None:
    data = load_dataset("digits", seed=0)
    state = torch.random.get_rng_state()
    a = proxy_accuracy(tiny_arch(), data, SMALL, seed=3)
    b = proxy_accuracy(tiny_arch(), data, SMALL, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.ok and a.accuracy == b.accuracy
    assert 0.3 < a.accuracy <= 1.0  # far above chance (0.1) after two short epochs
    c = proxy_accuracy(tiny_arch(), data, SMALL, seed=4)
    assert c.ok


def test_training_with_compressed_cuts() -> None:
    data = load_dataset("digits", seed=0)
    r = proxy_accuracy(tiny_arch(), data, SMALL, seed=0, cuts=[Cut(2, 0.5, 8)])
    assert r.ok and r.accuracy > 0.3


def test_divergence_is_a_failed_evaluation() -> None:
    data = load_dataset("digits", seed=0)
    wild = ProxyBudget(epochs=2, subset=600, optimizer="sgd", lr=1e6, batch_size=32)
    r = proxy_accuracy(ArchSpec("lin", (Conv(8, bn=False, act="none"), Head())), data, wild)
    assert r.status == "diverged" and math.isnan(r.accuracy) and "loss" in r.message


def test_architecture_too_deep_for_the_input_is_a_failed_evaluation() -> None:
    data = load_dataset("digits", seed=0)  # 8x8 images
    deep = ArchSpec("deep", (Conv(8), Pool(), Pool(), Pool(), Pool(), Head()))
    r = proxy_accuracy(deep, data, SMALL)
    assert r.status == "failed" and math.isnan(r.accuracy) and r.message


def test_bad_budget_and_device() -> None:
    with pytest.raises(ValueError, match=r"ProxyBudget.epochs must be >= 1"):
        ProxyBudget(epochs=0)
    with pytest.raises(ValueError, match=r"ProxyBudget.optimizer must be adam or sgd"):
        ProxyBudget(optimizer="lion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device must be cpu, cuda or auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


REFERENCE_GENOME = [6, 1, 1, 6, 1, 1, 6, 1, 1, 6, 0, 1, 6, 0, 1, 9, 0, 0]


@pytest.mark.slow
def test_reference_architecture_reaches_95_percent_on_mnist5k() -> None:
    torch.set_num_threads(2)
    sp = get_space("mobile")
    data = load_dataset("mnist5k", seed=0)
    r = proxy_accuracy(sp.decode(REFERENCE_GENOME), data, ProxyBudget(), seed=0)
    assert r.ok and r.accuracy >= 0.95, r


@pytest.mark.slow
def test_accuracy_ranks_architectures_by_capacity() -> None:
    torch.set_num_threads(2)
    sp = get_space("mobile")
    data = load_dataset("mnist5k", seed=0)
    ladder = [
        ArchSpec("conv8", (Conv(8, 3, 2), Head())),
        ArchSpec("conv16-conv32", (Conv(16, 3, 2), Conv(32, 3, 2), Head())),
        ArchSpec("cnn", (Conv(32), Pool(), Conv(64), Pool(), Head(hidden=(128,)))),
        sp.decode([0] * 9 + [9, 0, 0] * 3),
        sp.decode(REFERENCE_GENOME),
    ]
    acc = [proxy_accuracy(a, data, ProxyBudget(), seed=0).accuracy for a in ladder]
    assert acc == sorted(acc) and len(set(acc)) == len(acc), acc


@pytest.mark.gpu
def test_proxy_training_on_cuda() -> None:
    data = load_dataset("digits", seed=0)
    r = proxy_accuracy(tiny_arch(), data, SMALL, seed=0, device="cuda")
    assert r.ok and r.accuracy > 0.3
    again = proxy_accuracy(tiny_arch(), data, SMALL, seed=0, device="cuda")
    assert again.accuracy == pytest.approx(r.accuracy, abs=0.02)  # cuDNN may not be bit-exact


def test_dropout_is_seeded_too() -> None:
    data = load_dataset("digits", seed=0)
    arch = ArchSpec("dropout", (Conv(8), Pool(), Head(hidden=(32,), dropout=0.5)))
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # whatever the caller's generator holds
        results.append(proxy_accuracy(arch, data, SMALL, seed=0).accuracy)
    assert results[0] == results[1]
