"""Proxy training: a short, deterministic training run that ranks architectures by accuracy.

As in proxy-task NAS (e.g. MnasNet, ProxylessNAS), the accuracy is measured on a small data set at
its own resolution (28x28 MNIST, say) with a reduced width and a few epochs, while latency is
profiled at the deployment input shape of the scenario. The budget is part of the cache key.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from .build import Cut, build_model
from .data import Dataset
from .spec import ArchSpec

__all__ = ["ProxyBudget", "TrainResult", "proxy_accuracy", "resolve_device"]


@dataclass(frozen=True)
class ProxyBudget:
    """How much training one accuracy evaluation gets.

    ``subset``: at most this many training samples (None: all). ``width_scale``: every layer's
    width is multiplied by it. The learning rate follows a cosine schedule to 0 over all steps.
    """

    epochs: int = 5
    subset: int | None = None
    width_scale: float = 0.5
    batch_size: int = 128
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 2e-2
    weight_decay: float = 0.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"ProxyBudget.epochs must be >= 1, got {self.epochs}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"ProxyBudget.subset must be >= 1 or None, got {self.subset}")
        if not 0 < self.width_scale <= 4:
            raise ValueError(f"ProxyBudget.width_scale must be in (0, 4], got {self.width_scale}")
        if self.batch_size < 1:
            raise ValueError(f"ProxyBudget.batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"ProxyBudget.optimizer must be adam or sgd, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"ProxyBudget.lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """Validation accuracy in [0, 1] (NaN unless ``status`` is ``ok``) and the training time."""

    accuracy: float
    train_time_s: float
    status: Literal["ok", "diverged", "failed"]
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` (an error if CUDA is absent) or ``auto`` (CUDA when present)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    return torch.device(device)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            correct += int((model(x[i:i + batch]).argmax(dim=1) == y[i:i + batch]).sum())
    return correct / x.shape[0]


def proxy_accuracy(
    spec: ArchSpec,
    data: Dataset,
    budget: ProxyBudget = ProxyBudget(),
    *,
    seed: int = 0,
    cuts: Sequence[Cut] = (),
    device: str = "cpu",
) -> TrainResult:
    """Train ``spec`` (with the compression of ``cuts``) on ``data`` and return its validation
    accuracy. Deterministic for a seed on the CPU. A NaN or exploding loss, or an architecture
    that cannot run on the data's input size, is a failed evaluation, not an exception."""
    dev = resolve_device(device)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = data.x_train, data.y_train
    if budget.subset is not None and budget.subset < x_train.shape[0]:
        keep = torch.randperm(x_train.shape[0], generator=gen)[: budget.subset]
        x_train, y_train = x_train[keep], y_train[keep]
    x_train, y_train = x_train.to(dev), y_train.to(dev)
    x_val, y_val = data.x_val.to(dev), data.y_val.to(dev)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    # Weight initialisation and dropout draw from torch's global generator: seed it inside a
    # fork, so that the run is reproducible and the caller's generator state is untouched.
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return _train(spec, data.num_classes, budget, cuts, x_train, y_train, x_val, y_val,
                      gen, start)


def _train(spec: ArchSpec, num_classes: int, budget: ProxyBudget, cuts: Sequence[Cut],
           x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
           y_val: torch.Tensor, gen: torch.Generator, start: float) -> TrainResult:
    dev = x_train.device
    model = build_model(spec, x_train.shape[1], num_classes, width_scale=budget.width_scale,
                        cuts=cuts).to(dev)
    if budget.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=budget.lr, momentum=budget.momentum,
                              weight_decay=budget.weight_decay, nesterov=True)
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / budget.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, budget.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    first_loss = None
    try:
        for _ in range(budget.epochs):
            model.train()
            order = torch.randperm(n, generator=gen).to(dev)
            for i in range(0, n, budget.batch_size):
                idx = order[i:i + budget.batch_size]
                if idx.numel() < 2:  # batch norm needs two samples
                    continue
                loss = loss_fn(model(x_train[idx]), y_train[idx])
                value = float(loss.detach())
                first_loss = value if first_loss is None else first_loss
                if not math.isfinite(value) or value > 100 * max(first_loss, 1.0):
                    return TrainResult(math.nan, time.perf_counter() - start, "diverged",
                                       f"training loss {value:.3g} (first {first_loss:.3g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        accuracy = _accuracy(model, x_val, y_val)
    except RuntimeError as exc:
        return TrainResult(math.nan, time.perf_counter() - start, "failed",
                           str(exc).splitlines()[0][:300])
    return TrainResult(accuracy, time.perf_counter() - start, "ok")
