"""The example scenarios shipped in ``experiments/scenarios``, looked up by name.

Light on purpose (no simulator import): the command line lists these names in its help.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SCENARIO_DIR", "example_scenarios", "resolve_scenario_path"]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


def example_scenarios() -> dict[str, Path]:
    """The shipped scenarios, by name (the file name without ``.yaml``)."""
    return {p.name.removesuffix(".yaml"): p for p in sorted(SCENARIO_DIR.glob("*.yaml"))}


def resolve_scenario_path(arg: str) -> Path:
    """A scenario file path, or the name of a shipped example (``three-tier``).

    Raises :class:`sim.ScenarioError` naming the shipped examples when ``arg`` is neither.
    """
    path = Path(arg)
    if path.exists():
        return path
    examples = example_scenarios()
    if arg in examples:
        return examples[arg]
    from sim.errors import ScenarioError

    names = ", ".join(sorted(examples))
    raise ScenarioError(f"{arg}: no such file, nor a shipped example scenario ({names})")
