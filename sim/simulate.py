"""``simulate``: a pipeline on a scenario, over independent replications, with one seed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .engine import CpuShare, RunRecord, run_simpy
from .errors import FastEvaluatorError, ScenarioError, UnfinishedTransferError
from .fast import check_fast_applicable, run_fast
from .network import Plan, compile_plan, mean_rate_bps
from .policy import OraclePolicy, Policy, SplitPolicy
from .report import LatencyReport, summarise
from .scenario import RayleighChannel, Scenario
from .seeds import child, children
from .stability import Load, offered_load, shared_load
from .workload import Stage, Transfer, pipeline_from_specs, sample_tasks, training_pipeline

__all__ = ["Engine", "SimulationResult", "check_transfer_times", "replication_seeds", "simulate"]

Engine = Literal["simpy", "fast", "auto"]


@dataclass(frozen=True)
class SimulationResult:
    """The report, and each replication's record (with timelines when asked)."""

    report: LatencyReport
    records: list[RunRecord]
    plan: Plan


def replication_seeds(
    seed: int, replication: int
) -> tuple[np.random.SeedSequence, np.random.SeedSequence, np.random.SeedSequence]:
    """Seeds (arrivals, channels, service jitter) of one replication.

    ``SeedSequence(seed)`` has one child per replication and each child three: a replication's
    randomness depends only on (seed, replication index), not on the pipeline or on how many
    replications run, so designs compared with the same seed share their sample paths.
    """
    rep = child(np.random.SeedSequence(seed), replication)
    arrivals, channels, service = children(rep, 3)
    return arrivals, channels, service


def _resolve_pipeline(scenario: Scenario, pipeline: Sequence[Stage] | None,
                      backward_included: bool = False) -> tuple[Stage, ...]:
    if pipeline is None:
        if scenario.pipeline is None:
            raise ScenarioError(
                f"scenario {scenario.name!r} has no pipeline: "
                "give one in the file or as an argument"
            )
        stages = pipeline_from_specs(scenario.pipeline)
    else:
        stages = tuple(pipeline)
        if not stages:
            raise ValueError("pipeline: needs at least one stage")
    if scenario.workload.mode == "training" and not backward_included:
        stages = training_pipeline(stages, scenario.workload.backward_flops_factor)
    return stages


def _resolve_policy(scenario: Scenario, policy: Policy, backward_included: bool) -> Policy:
    if scenario.workload.mode == "training" and not backward_included:
        factor = scenario.workload.backward_flops_factor
        return dataclasses.replace(
            policy, pipelines=tuple(training_pipeline(p, factor) for p in policy.pipelines))
    return policy


def _policy_load(scenario: Scenario, policy: Policy, variant: np.ndarray,
                 n: int) -> list[Load]:
    """Offered utilisation of a policy's resources at the share of tasks each pipeline got."""
    shares = np.bincount(variant, minlength=policy.states) / max(variant.size, 1)
    return shared_load(scenario, policy.pipelines, shares.tolist(), n)


MAX_TRANSFER_S = 1e6
"""The longest mean time one transfer may take (about 12 days): past it a link carries almost
nothing, and simulating it would walk the channel for hours."""
MAX_FADING_BLOCKS = 2e7
"""The most fading blocks one transfer may span on average (a Rayleigh link walks them all)."""


def check_transfer_times(scenario: Scenario, pipelines: Sequence[Sequence[Stage]]) -> None:
    """Refuse a transfer that would take longer than :data:`MAX_TRANSFER_S` at its link's
    mean rate, or span more than :data:`MAX_FADING_BLOCKS` fading blocks, in one line naming
    the link (a dead or nearly dead channel: the simulation would not end), as
    :class:`~sim.errors.UnfinishedTransferError`."""
    graph = scenario.graph()
    for stages in pipelines:
        for stage in stages:
            if not isinstance(stage, Transfer):
                continue
            link = graph.edges[stage.src, stage.dst]["spec"]
            mean = mean_rate_bps(link, scenario)
            seconds = stage.size_bits / mean if mean > 0 else float("inf")
            blocks = seconds / link.channel.coherence_s \
                if isinstance(link.channel, RayleighChannel) else 0.0
            if seconds > MAX_TRANSFER_S or blocks > MAX_FADING_BLOCKS:
                raise UnfinishedTransferError(
                    f"scenario {scenario.name}: link {stage.src}->{stage.dst}: a transfer of "
                    f"{stage.size_bits:g} bits takes {seconds:.3g} s at the link's mean rate "
                    f"({mean:.3g} bit/s)" + (f", {blocks:.3g} fading blocks" if blocks else "")
                    + f": more than a simulation allows ({MAX_TRANSFER_S:g} s, "
                    f"{MAX_FADING_BLOCKS:g} blocks); check the channel's settings")


def simulate(
    scenario: Scenario,
    pipeline: Sequence[Stage] | Policy | None = None,
    *,
    seed: int = 0,
    replications: int = 1,
    tasks: int | None = None,
    engine: Engine = "simpy",
    keep_timeline: bool = False,
    progress: bool = False,
    backward_included: bool = False,
    cpu_share: CpuShare | None = None,
) -> SimulationResult:
    """Simulate ``pipeline`` (default: the scenario's) under the scenario's workload.

    ``pipeline`` may be a policy (:mod:`sim.policy`): each task runs the pipeline of the channel
    state its first node observes at its arrival (:class:`~sim.policy.SplitPolicy`), or the one
    that would finish it first alone (:class:`~sim.policy.OraclePolicy`); the offered
    utilisations are then at the share of tasks each pipeline got in the first replication.

    ``tasks`` overrides ``workload.tasks`` (tasks per source per replication). In training mode
    the backward pass is appended to the given forward stages by reversing them
    (:func:`sim.workload.training_pipeline`), unless ``backward_included`` says the pipeline
    already holds it (a split design's, built from the model: see
    :func:`search.pipeline.design_pipeline`). The report gives each resource's offered
    utilisation (:mod:`sim.stability`); at or over 1 the latencies depend on the run's length.

    ``engine``: ``simpy`` (the discrete-event simulation), ``fast`` (the exact recursion of
    :mod:`sim.fast`; refuses pipelines that visit a queue twice) or ``auto`` (fast where it
    applies). ``cpu_share``: nodes that share one host's processors
    (:class:`sim.engine.CpuShare`; the SimPy engine only, which ``auto`` then picks; every node
    it names must be the scenario's, and a node that does no work is left out of the sharing).
    """
    if engine not in ("simpy", "fast", "auto"):
        raise ValueError(f"engine must be simpy, fast or auto, got {engine!r}")
    if cpu_share is not None:
        if engine == "fast":
            raise ValueError("engine fast cannot share a host's processors (cpu_share): use "
                             "simpy or auto")
        unknown = sorted(cpu_share.nodes - set(scenario.nodes))
        if unknown:
            raise ValueError(f"cpu_share: unknown node(s) {', '.join(unknown)} (nodes: "
                             f"{', '.join(sorted(scenario.nodes))})")
        engine = "simpy"
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    n = scenario.workload.tasks if tasks is None else tasks
    if n < 1:
        raise ValueError(f"tasks must be >= 1, got {n}")
    if n <= scenario.workload.warmup_tasks:
        raise ValueError(
            f"tasks ({n}) must exceed workload.warmup_tasks ({scenario.workload.warmup_tasks})"
        )
    if engine not in ("simpy", "fast", "auto"):
        raise ValueError(f"engine must be simpy, fast or auto, got {engine!r}")
    policy = None
    if isinstance(pipeline, SplitPolicy | OraclePolicy):
        policy = _resolve_policy(scenario, pipeline, backward_included)
        run: Sequence[Stage] | Policy = policy
        try:
            for stages in policy.pipelines:  # names nodes and links the scenario has
                offered_load(scenario, stages, n)
        except ValueError as exc:
            raise ScenarioError(f"{scenario.name}: {exc}") from None
        loads: list[Load] | None = None
    else:
        run = stages = _resolve_pipeline(scenario, pipeline, backward_included)
        try:
            loads = offered_load(scenario, stages, n)
        except ValueError as exc:
            raise ScenarioError(f"{scenario.name}: {exc}") from None
    check_transfer_times(scenario, policy.pipelines if policy is not None else [stages])
    bar = None
    if progress:
        from tqdm import tqdm

        total = replications * n * len(scenario.workload.sources)
        bar = tqdm(total=total, unit="task", desc="simulate", mininterval=0.5, leave=False)
    records: list[RunRecord] = []
    used_engine = engine
    engines: list[str] = []  # each replication's, for the report
    plan: Plan | None = None
    try:
        for rep in range(replications):
            arr_seed, ch_seed, serv_seed = replication_seeds(seed, rep)
            try:
                plan = compile_plan(scenario, run, ch_seed)
            except ValueError as exc:
                raise ScenarioError(f"{scenario.name}: {exc}") from None
            if engine == "auto":
                try:
                    check_fast_applicable(plan)
                    used_engine = "fast"
                except FastEvaluatorError:
                    used_engine = "simpy"
            task_set = plan.choose(sample_tasks(scenario, plan.stages, n, arr_seed, serv_seed))
            if loads is None:
                assert policy is not None and task_set.variant is not None
                loads = _policy_load(scenario, policy, task_set.variant, n)
            fast = None
            if used_engine == "fast":
                try:
                    fast = run_fast(plan, task_set, keep_timeline=keep_timeline)
                except FastEvaluatorError:
                    if engine == "fast":
                        raise
                    used_engine = "simpy"  # auto: a tie the recursion cannot order
            engines.append(used_engine)
            if fast is not None:
                records.append(fast)
                if bar is not None:
                    bar.update(task_set.n)
            else:
                tick = _ticker(bar)
                records.append(run_simpy(plan, task_set, keep_timeline=keep_timeline,
                                         on_complete=tick, cpu_share=cpu_share))
    finally:
        if bar is not None:
            bar.close()
    assert plan is not None and loads is not None
    report = summarise(records, plan, scenario=scenario.name,
                       engine=", ".join(dict.fromkeys(engines)), seed=seed,
                       offered={x.resource: x.utilisation for x in loads})
    return SimulationResult(report=report, records=records, plan=plan)


def _ticker(bar: Any | None) -> Callable[[], None] | None:
    """A cheap per-task callback that updates a tqdm bar every 1,000 tasks."""
    if bar is None:
        return None
    count = [0]

    def tick() -> None:
        count[0] += 1
        if count[0] == 1000:
            bar.update(1000)
            count[0] = 0

    return tick
