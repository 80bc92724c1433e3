"""Discrete-event simulation of split-model pipelines over a mobile edge network.

``sim`` knows nothing about neural networks: a task is a pipeline of :class:`Compute` and
:class:`Transfer` stages, run through FIFO queues (nodes with parallel servers, links with a
channel model) under a workload of one or more sources.

>>> from sim import load_scenario, simulate
>>> scenario = load_scenario("experiments/scenarios/three-tier.yaml")  # doctest: +SKIP
>>> result = simulate(scenario, seed=1)  # doctest: +SKIP
>>> result.report.mean_latency_s  # doctest: +SKIP
"""

from .errors import FastEvaluatorError, ScenarioError
from .report import LatencyReport, ResourceStats, StageStats
from .scenario import Scenario, load_scenario, read_scenario_dict, scenario_from_dict
from .simulate import SimulationResult, simulate
from .workload import Compute, Pipeline, Stage, Transfer, training_pipeline

__all__ = [
    "Compute",
    "FastEvaluatorError",
    "LatencyReport",
    "Pipeline",
    "ResourceStats",
    "Scenario",
    "ScenarioError",
    "SimulationResult",
    "Stage",
    "StageStats",
    "Transfer",
    "load_scenario",
    "read_scenario_dict",
    "scenario_from_dict",
    "simulate",
    "training_pipeline",
]
