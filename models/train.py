"""Proxy training: a short, deterministic training run that ranks architectures by accuracy.

As in proxy-task NAS (e.g. MnasNet, ProxylessNAS), the accuracy is measured on a small data set at
its own resolution (28x28 MNIST, say) with a reduced width and a few epochs, while latency is
profiled at the deployment input shape of the scenario. The budget is part of the cache key.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from .build import build_model
from .data import Dataset
from .spec import ArchSpec, Cut

__all__ = ["InitStateMismatch", "ProxyBudget", "TrainResult", "device_tag", "one_thread",
           "proxy_accuracy", "resolve_device", "seed_sd"]


class InitStateMismatch(ValueError):
    """``init_state`` does not fit the architecture (another architecture's, or old, weights)."""


@dataclass(frozen=True)
class ProxyBudget:
    """How much training one accuracy evaluation gets.

    ``subset``: at most this many training samples (None: all). ``width_scale``: every layer's
    width is multiplied by it. The learning rate follows a cosine schedule to 0 over all steps.

    A compressed variant of an architecture starts from the architecture's trained weights and
    fine-tunes for ``finetune_fraction`` of the steps of a full run, at ``finetune_lr_scale``
    times ``lr`` (cosine to 0): our choice, measured by the ``proxy`` experiment.
    """

    epochs: int = 5
    subset: int | None = None
    width_scale: float = 0.5
    batch_size: int = 128
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 2e-2
    weight_decay: float = 0.0
    momentum: float = 0.9
    finetune_fraction: float = 0.25
    finetune_lr_scale: float = 0.1

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
        if not 0 < self.finetune_fraction <= 1:
            raise ValueError(f"ProxyBudget.finetune_fraction must be in (0, 1], got "
                             f"{self.finetune_fraction}")
        if not 0 < self.finetune_lr_scale <= 1:
            raise ValueError(f"ProxyBudget.finetune_lr_scale must be in (0, 1], got "
                             f"{self.finetune_lr_scale}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """Validation accuracy in [0, 1] (NaN unless ``status`` is ``ok``) and the training time.

    ``status``: ``ok``; ``diverged`` (a NaN or exploding loss) and ``failed`` (the architecture
    cannot run on the data, or no usable batch): deterministic, the same on every rerun;
    ``error``: anything else that went wrong while training (out of memory, say), which a rerun
    may not repeat, so it is never cached. ``state``: the trained weights (on the CPU), when
    asked for with ``keep_state``.
    """

    accuracy: float
    train_time_s: float
    status: Literal["ok", "diverged", "failed", "error"]
    message: str = ""
    state: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def deterministic(self) -> bool:
        """Whether a rerun gives this result again (everything but ``error``): what a cache
        may keep."""
        return self.status != "error"


_CODEC_FIT_SAMPLES = 256
"""Training images whose activations start a variant's bottlenecks (our choice: 256 images give
over 10,000 pixel vectors at 7x7 even for the deepest cut of the tiny space)."""


def seed_sd(accuracies: Sequence[Sequence[float]] | np.ndarray) -> float:
    """The standard deviation of one evaluation, from repeated seeds: rows are seeds, columns
    architectures; the pooled within-architecture sample variance (ddof 1), square-rooted.
    NaN with fewer than two seeds. Columns with a NaN are left out."""
    a = np.asarray(accuracies, dtype=float)
    if a.ndim != 2 or a.shape[0] < 2:
        return math.nan
    a = a[:, np.all(np.isfinite(a), axis=0)]
    if a.shape[1] == 0:
        return math.nan
    return float(np.sqrt(np.mean(np.var(a, axis=0, ddof=1))))


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` (an error if CUDA is absent) or ``auto`` (CUDA when present)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    return torch.device(device)


def device_tag(device: str) -> str:
    """What the cache keys a result by: ``cpu``, or ``cuda:`` and the GPU's name (training is
    deterministic on one device for a seed, not across devices)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return dev.type


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
    init_state: Mapping[str, torch.Tensor] | None = None,
    keep_state: bool = False,
) -> TrainResult:
    """Train ``spec`` (with the compression of ``cuts``) on ``data`` and return its validation
    accuracy. Deterministic for a seed on the CPU, whatever the machine's core count or the
    caller's torch thread setting: on the CPU it trains with one torch thread (see
    :func:`one_thread`). A NaN or exploding loss, or an architecture
    that cannot run on the data's input size, is a failed evaluation, not an exception.

    ``init_state``: start from these weights (the uncompressed architecture's, trained with the
    same budget) and fine-tune as the budget's ``finetune_*`` fields say; the codecs that the
    cuts insert are the only parameters it may lack, and their bottlenecks start as the
    principal components of the parent's activations at the cut (:meth:`ChainModel.fit_codecs`).
    ``keep_state``: return the trained weights
    in :attr:`TrainResult.state`.
    """
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
    with torch.random.fork_rng(devices=cuda), one_thread(dev.type == "cpu"):
        torch.manual_seed(seed)
        model = build_model(spec, x_train.shape[1], data.num_classes,
                            width_scale=budget.width_scale, cuts=cuts)
        if init_state is not None:
            try:
                missing, unexpected = model.load_state_dict(dict(init_state), strict=False)
            except RuntimeError as e:  # shapes differ: torch lists every tensor, one a line
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                raise InitStateMismatch(f"init_state does not fit {spec.name}: "
                                        f"{lines[min(1, len(lines) - 1)]}") from None
            wrong = [k for k in missing if not k.startswith("codecs.")] + list(unexpected)
            if wrong:
                raise InitStateMismatch(f"init_state does not fit {spec.name}: "
                                        f"{', '.join(wrong[:3])}")
            model.fit_codecs(x_train[:_CODEC_FIT_SAMPLES].cpu())
        model = model.to(dev)
        cannot = _cannot_run(model, x_train[:2])
        if cannot is not None:
            return TrainResult(math.nan, time.perf_counter() - start, "failed", cannot)
        result = _train(model, budget, x_train, y_train, x_val, y_val, gen, start,
                        finetune=init_state is not None)
    if keep_state and result.ok:
        state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        result = TrainResult(result.accuracy, result.train_time_s, result.status,
                             result.message, state)
    return result


@contextlib.contextmanager
def one_thread(active: bool = True) -> Iterator[None]:
    """Run torch's CPU operators on one thread inside, and restore the caller's setting after.

    A convolution's sums are split across threads, so two thread counts round differently and
    a few hundred steps of training turn that into different accuracies (0.611 with one thread,
    0.622 with two, for one tiny architecture on 3,000 Fashion-MNIST images). The accuracy
    cache must not depend on how many workers a run used or how many cores its machine has, so
    every proxy training uses one thread; a search parallelises over trainings instead
    (``workers``), which for these small models is also the faster use of the cores.
    """
    if not active or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cannot_run(model: nn.Module, x: torch.Tensor) -> str | None:
    """Why the model cannot run on inputs like ``x`` (an architecture too deep for the image
    size, say), or None. Deterministic: the same on every rerun, so the caller may cache it.
    Running out of memory is not: it is left for the training to meet and report as ``error``."""
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one too (torch >= 1.13)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, torch.cuda.OutOfMemoryError) or any(
                m in text.lower() for m in ("out of memory", "can't allocate")):
            return None
        return f"cannot run on {tuple(x.shape[1:])} inputs: {text[:250]}"
    return None


def _train(model: nn.Module, budget: ProxyBudget, x_train: torch.Tensor, y_train: torch.Tensor,
           x_val: torch.Tensor, y_val: torch.Tensor, gen: torch.Generator, start: float,
           finetune: bool) -> TrainResult:
    dev = x_train.device
    lr = budget.lr * (budget.finetune_lr_scale if finetune else 1.0)
    if budget.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=lr, weight_decay=budget.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=budget.momentum,
                              weight_decay=budget.weight_decay, nesterov=True)
    n = x_train.shape[0]
    if n < 2:
        return TrainResult(math.nan, time.perf_counter() - start, "failed",
                           "fewer than two training samples (batch norm needs two)")
    usable = n // budget.batch_size + (n % budget.batch_size >= 2)  # batches of >= 2 samples
    steps = budget.epochs * usable
    if finetune:
        steps = max(1, math.ceil(budget.finetune_fraction * steps))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn = nn.CrossEntropyLoss()
    first_loss = None
    done = 0
    try:
        while done < steps:
            model.train()
            order = torch.randperm(n, generator=gen).to(dev)
            for i in range(0, n, budget.batch_size):
                idx = order[i:i + budget.batch_size]
                if idx.numel() < 2:  # batch norm needs two samples
                    continue
                if done == steps:
                    break
                done += 1
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
    except RuntimeError as exc:  # out of memory, say: another run may not repeat it
        return TrainResult(math.nan, time.perf_counter() - start, "error",
                           str(exc).splitlines()[0][:300])
    return TrainResult(accuracy, time.perf_counter() - start, "ok")
