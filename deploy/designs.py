"""Designs named on the command line: a JSON file, a row of a search's ``front.csv``, or an
architecture with split positions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from models.build import Cut
from models.resolve import resolve_architecture
from models.spec import ArchSpec
from search.design import Design, check_design, design_from_description
from sim.scenario import Scenario

__all__ = ["design_from_description", "design_from_dict", "load_design"]



def design_from_dict(data: dict[str, object]) -> Design:
    """The inverse of :meth:`Design.to_json` (after ``json.loads``)."""
    try:
        arch = ArchSpec.from_dict(data["arch"])  # type: ignore[arg-type]
        route = tuple(str(n) for n in data["route"])  # type: ignore[attr-defined]
        cuts = tuple(Cut(int(p), float(b), int(bits)) for p, b, bits in data["cuts"])  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"a design needs arch, route and cuts [[position, bottleneck, bits]]: "
                         f"{exc}") from None
    return check_design(Design(arch, route, cuts))


def load_design(text: str, scenario: Scenario, *, row: int = 0,
                splits: str | None = None) -> Design:
    """``text`` is a design JSON file, a ``front.csv`` (take row ``row``, 0 = the first), or an
    architecture (see :func:`models.resolve.resolve_architecture`) with ``splits``: comma-separated
    block positions, one per hop of the scenario's path, plain cuts (fewer positions: the request
    ends early, the rest of the path idle)."""
    path = Path(text)
    if path.suffix == ".csv":
        if not path.exists():
            raise ValueError(f"--design {text}: no such file")
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not 0 <= row < len(rows):
            raise ValueError(f"--row must be in 0..{len(rows) - 1} for {text}, got {row}")
        if "arch" not in rows[row] or "design" not in rows[row]:
            raise ValueError(f"{text}: a front.csv needs the columns arch and design")
        return design_from_description(resolve_architecture(rows[row]["arch"]),
                                       rows[row]["design"])
    if path.suffix == ".json" and path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "route" in data:
            return design_from_dict(data)
    arch = resolve_architecture(text)
    hops = len(scenario.path) - 1
    if splits is None and hops == 0:
        splits = ""
    if splits is None:
        raise ValueError(f"--design {text} is an architecture: give --splits P1,P2,... "
                         f"(block positions 0..{arch.n_blocks}, one per hop)")
    try:
        positions = [int(p) for p in splits.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--splits must be integers separated by commas, got {splits!r}") from None
    if len(positions) > hops:
        raise ValueError(f"--splits: the path {scenario.path} has {hops} hop(s), "
                         f"got {len(positions)} positions")
    positions += [arch.n_blocks] * (hops - len(positions))
    return check_design(Design(arch, tuple(scenario.path), tuple(Cut(p) for p in positions)))
