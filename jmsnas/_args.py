"""What the commands share: argument types, the help format, scenario loading with overrides."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from sim import Scenario

__all__ = ["HelpFormatter", "load_scenario_with", "non_negative_int", "positive_int",
           "warmup_conflict"]


def _int_at_least(text: str, least: int) -> int:
    """A whole number >= ``least``, or an argparse error naming what was given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1, or an argparse error naming what was given."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """A whole number >= 0, or an argparse error naming what was given."""
    return _int_at_least(text, 0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, as ``(default: X)``. Options whose default is
    ``None`` (taken from the scenario or a configuration file) or a flag's ``False`` state
    their default in their own help text instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def warmup_conflict(tasks: int, warmup: int, tasks_given: bool, warmup_given: bool) -> str:
    """The one-line error for a run whose tasks do not exceed its warm-up, with the fix."""
    where = "--warmup" if warmup_given else "the scenario's workload.warmup_tasks"
    if tasks_given:
        return (f"--tasks {tasks} must exceed the warm-up ({warmup} tasks, {where}): add "
                f"--warmup {tasks // 10} or raise --tasks above {warmup}")
    return (f"--warmup {warmup} must be less than the scenario's {tasks} tasks "
            f"(workload.tasks): lower --warmup or add --tasks {warmup + tasks}")


def load_scenario_with(arg: str, warmup: int | None = None,
                       tasks: int | None = None) -> tuple[Scenario, Path]:
    """A scenario (a file or a shipped name) with ``workload.warmup_tasks`` and
    ``workload.tasks`` replaced where given, and its file. Tasks that do not exceed the warm-up
    raise a ValueError that says how to fix the command (:func:`warmup_conflict`)."""
    from experiments.shipped import resolve_scenario_path
    from sim.scenario import read_scenario_dict, scenario_from_dict

    path = resolve_scenario_path(arg)
    data = read_scenario_dict(path)
    if warmup is not None or tasks is not None:
        workload = data.get("workload")
        if isinstance(workload, dict):
            if warmup is not None:
                workload["warmup_tasks"] = warmup
            if tasks is not None:
                workload["tasks"] = tasks
            n, w = workload.get("tasks"), workload.get("warmup_tasks", 0)
            if _whole(n) and _whole(w) and n <= w:
                raise ValueError(warmup_conflict(n, w, tasks is not None, warmup is not None))
    return scenario_from_dict(data, base_dir=path.parent, where=str(path)), path


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
