"""The search configuration: one validated, frozen object, saved next to every result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from models.spec import ArchSpec
from models.train import ProxyBudget
from sim.scenario import load_yaml

__all__ = ["BudgetConfig", "SearchConfig", "load_search_config", "resolve_config_dataset"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetConfig(_Frozen):
    """Proxy-training budget of one accuracy evaluation (see :class:`models.train.ProxyBudget`).

    The defaults are the budget with the lowest noise and the best agreement between its own
    seeds among those of 3.5 s or less that the ``proxy`` experiment measured on
    Fashion-MNIST (2 epochs on 10,000 images at half width: about 3.5 s per ``tiny`` architecture
    on two CPU cores, Kendall tau 0.69 against long training, see the README);
    ``models.train.ProxyBudget()`` is a fuller one.
    """

    epochs: Annotated[int, Field(ge=1)] = 2
    subset: Annotated[int, Field(ge=2)] | None = 10000
    width_scale: Annotated[float, Field(gt=0, le=4)] = 0.5
    batch_size: Annotated[int, Field(ge=2)] = 128
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 0.01
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    finetune_fraction: Annotated[float, Field(gt=0, le=1)] = 0.25
    """A compressed variant fine-tunes from its parent for this share of the parent's steps."""
    finetune_lr_scale: Annotated[float, Field(gt=0, le=1)] = 0.1

    def to_budget(self) -> ProxyBudget:
        return ProxyBudget(**self.model_dump())


class SearchConfig(_Frozen):
    """Everything a search run depends on besides the scenario.

    Objectives: accuracy (maximised) and a latency statistic (minimised), optionally device
    energy per request (minimised), or, with ``objective: scalarized``, the single objective
    accuracy - ``lam`` x latency_s (our reading of the paper's trade-off objective).
    """

    space: Literal["tiny", "mobile"] = "tiny"
    architecture: str | None = None
    """Fix the architecture and search only its route, split and compression: a reference model
    (``resnet18``), ``SPACE:G,G,...``, an architecture name such as ``tiny-010100000``, or an
    architecture JSON file (see :func:`models.resolve.resolve_architecture`)."""
    dataset: Literal["auto", "fashion-mnist", "mnist5k", "digits", "mnist1d", "cifar10"] = "auto"
    """``auto``: Fashion-MNIST when it is on disk or can be downloaded, else mnist5k (see
    :func:`resolve_config_dataset`); a run records the data set it used."""
    dataset_seed: Annotated[int, Field(ge=0)] = 0
    budget: BudgetConfig = BudgetConfig()
    objective: Literal["pareto", "scalarized"] = "pareto"
    lam: Annotated[float, Field(ge=0)] = 1.0
    latency: Literal["mean", "p95"] = "mean"
    energy_objective: bool = False
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    compression: bool = True
    finetune_plain: bool | None = None
    """Score a plain (uncompressed) design after the same fine-tuning from its trained weights
    that a compressed variant gets, so that every design of an architecture has had the same
    training; default: when ``compression`` is on. A comparison that mixes spaces with and
    without compression (a fixed model's splits against the joint search) sets it alike."""
    return_result: bool = False
    policy_states: Annotated[int, Field(ge=1, le=8)] = 1
    """Search a run-time split policy with the architecture (:mod:`search.adaptive`): the
    first node observes its uplink's rate, cut into this many states at quantiles of the rate
    (fewer where the channel has fewer rates), and each state has its own route, splits and
    compressions in the genome. 1: one static design, as a plain search."""
    policy_observe_delay_s: Annotated[float, Field(ge=0)] = 0.0
    """How old the rate the first node observes is (s): 0, the current rate."""
    population: Annotated[int, Field(ge=4)] = 12
    generations: Annotated[int, Field(ge=1)] = 4
    dp_seeding: bool = True
    """Start half the population from random architectures with their exact optimal split."""
    resplit: Literal["none", "plain", "mix"] = "mix"
    """What an offspring whose architecture the run has not evaluated yet does with the cuts it
    inherited (tuned for another architecture): keeps them (``none``), or takes the cuts of
    least no-queueing latency (:func:`search.dp.optimal_design`), plain float32 ones
    (``plain``) or, in turn, the three kinds of cut of the seeding (``mix``)."""
    crossover_prob: Annotated[float, Field(ge=0, le=1)] = 0.9
    mutation_prob: Annotated[float, Field(gt=0, le=1)] | None = None
    """Per-gene mutation probability; default 1 / number of genes."""
    noise_architectures: Annotated[int, Field(ge=0)] = 6
    """Architectures trained with a second seed to measure the proxy's seed-to-seed noise, once
    per budget, data set and space (the cache keeps it and serves it to later runs; 0: no
    measurement by this run, so the sd is NaN unless the cache already holds one)."""
    sim_tasks: Annotated[int, Field(ge=10)] = 300
    """Measured tasks per source per design; the scenario's warm-up tasks run on top."""
    sim_replications: Annotated[int, Field(ge=1)] = 1
    remeasure_replications: Annotated[int, Field(ge=0)] = 10
    """After the search, every front design is simulated again on this many replications of a
    fresh seed (:mod:`search.remeasure`): at least 5, or 0 for none."""
    remeasure_tasks: Annotated[int, Field(ge=10)] = 1000
    """Measured tasks per source per replication of the re-measurement."""
    test_accuracy: bool = True
    """Also train every front design on training plus validation data and score it on the
    data set's held-out test set (where it has one)."""
    hv_latency_ref_s: Annotated[float, Field(gt=0)] = 1.0
    """Latency of the hypervolume's reference point."""
    hv_error_ref: Annotated[float, Field(gt=0, le=1)] | None = None
    """Error of the hypervolume's reference point; default chance, 1 - 1/classes (0.9 for the
    shipped ten-class data sets): designs no better than guessing add nothing."""
    hv_energy_ref_j: Annotated[float, Field(gt=0)] = 1.0
    """Device energy per request of the reference point, with ``energy_objective``."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the genetic algorithm (initial population, variation, selection)."""
    eval_seed: Annotated[int, Field(ge=0)] = 0
    """Seed of proxy training and of the simulation: the same for every design (common random
    numbers) and independent of ``seed``, so that runs with different seeds score designs alike."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    workers: Annotated[int, Field(ge=1)] = 1
    executor: Literal["serial", "local", "dask"] = "local"
    """Where proxy training runs: in this process, a local pool of ``workers`` processes, or
    the Dask cluster whose scheduler listens at ``scheduler``."""
    scheduler: str | None = None
    """Address of a Dask scheduler (``tcp://host:8786``), for ``executor: dask``."""

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str | None) -> str | None:
        if value is not None:
            from models.resolve import resolve_architecture

            resolve_architecture(value)  # a ValueError says which forms are allowed
        return value

    @model_validator(mode="after")
    def _even_population(self) -> SearchConfig:
        if self.population % 2:
            raise ValueError(f"population must be even (offspring come in pairs), "
                             f"got {self.population}")
        if 0 < self.remeasure_replications < 5:
            raise ValueError(f"remeasure_replications must be 0 (none) or at least 5, got "
                             f"{self.remeasure_replications}")
        if self.executor == "dask" and not self.scheduler:
            raise ValueError("executor dask needs scheduler: the address of a running Dask "
                             "scheduler, such as tcp://10.0.0.5:8786")
        return self

    def hv_reference(self, num_classes: int = 10) -> tuple[float, float, float]:
        """The hypervolume's reference point: (error, latency_s, device energy_j)."""
        error = 1.0 - 1.0 / num_classes if self.hv_error_ref is None else self.hv_error_ref
        return error, self.hv_latency_ref_s, self.hv_energy_ref_j

    @property
    def plain_finetuned(self) -> bool:
        """Whether plain designs are fine-tuned (:attr:`finetune_plain`, resolved)."""
        return self.compression if self.finetune_plain is None else self.finetune_plain

    def fixed_architecture(self) -> ArchSpec | None:
        """The architecture named by ``architecture``, or None when it is searched."""
        if self.architecture is None:
            return None
        from models.resolve import resolve_architecture

        return resolve_architecture(self.architecture)

    def with_changes(self, **changes: Any) -> SearchConfig:
        """A validated copy with some fields replaced (``None`` values are ignored)."""
        data = self.model_dump()
        for key, value in changes.items():
            if value is None:
                continue
            if key in BudgetConfig.model_fields:
                data["budget"][key] = value
            else:
                data[key] = value
        return validate_config(data, "arguments")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def resolve_config_dataset(config: SearchConfig) -> tuple[SearchConfig, str]:
    """The config with ``dataset: auto`` replaced by the data set it means here, and a one-line
    reason (see :func:`models.data.resolve_dataset`). An explicit ``fashion-mnist`` that cannot
    be had raises :class:`models.data.DatasetNotFoundError`."""
    from models.data import resolve_dataset

    name, reason = resolve_dataset(config.dataset)
    return (config if name == config.dataset else config.with_changes(dataset=name)), reason


def validate_config(data: dict[str, Any], where: str) -> SearchConfig:
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        msg = msg.removeprefix("Value error, ")
        raise ValueError(f"{where}: {loc}: {msg}") from None


def load_search_config(path: str | Path, base: SearchConfig | None = None) -> SearchConfig:
    """Read a search configuration YAML file (any key may be left out: ``base``'s value
    applies, by default the defaults; ``budget`` is merged key by key)."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the search configuration ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a search configuration must be a mapping")
    if base is not None:
        merged = base.model_dump()
        for key, value in data.items():
            if key == "budget" and isinstance(value, dict):
                merged["budget"].update(value)
            else:
                merged[key] = value
        data = merged
    return validate_config(data, str(path))
