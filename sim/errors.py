"""Errors raised by the simulator for people, not for debuggers."""

from __future__ import annotations

__all__ = ["FastEvaluatorError", "ScenarioError", "UnfinishedTransferError"]


class ScenarioError(ValueError):
    """A scenario (file or object) is invalid.

    The message is one line naming the file, the field, the value and what is allowed, e.g.
    ``three-tier.yaml: links[0].dst: unknown node 'egde' (nodes: phone, edge, cloud)``.
    """


class UnfinishedTransferError(ScenarioError):
    """A transfer the simulation would not finish: its link is dead or nearly so at its mean
    rate (:func:`sim.simulate.simulate` refuses it). A search scores such a design infeasible
    instead of stopping."""


class FastEvaluatorError(ValueError):
    """The exact fast evaluator cannot handle this pipeline; the SimPy engine can."""
