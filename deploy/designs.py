"""Designs named on the command line: a JSON file, a row of a search's ``front.csv``, or an
architecture with split positions; static designs or split policies (:mod:`deploy.routing`)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from models.resolve import resolve_architecture
from models.spec import ArchSpec, Cut
from search.design import (
    AnyDesign,
    Design,
    PolicyDesign,
    check_design,
    design_from_description,
    policy_from_description,
)
from search.runs import read_run_config
from sim.scenario import Scenario

from .routing import Routing

__all__ = ["design_from_description", "design_from_dict", "load_design", "load_routing"]


def design_from_dict(data: dict[str, object]) -> AnyDesign:
    """The inverse of :meth:`Design.to_json` and :meth:`PolicyDesign.to_json` (after
    ``json.loads``)."""
    if "states" in data:
        states = data["states"]
        if not isinstance(states, list) or not all(isinstance(d, dict) for d in states):
            raise ValueError("a policy design's states must be a list of designs")
        designs = [design_from_dict(d) for d in states]
        if not all(isinstance(d, Design) for d in designs):
            raise ValueError("a policy design's states must be designs, not policies")
        return PolicyDesign(tuple(d for d in designs if isinstance(d, Design)))
    try:
        arch = ArchSpec.from_dict(data["arch"])  # type: ignore[arg-type]
        route = tuple(str(n) for n in data["route"])  # type: ignore[attr-defined]
        cuts = tuple(Cut(int(p), float(b), int(bits)) for p, b, bits in data["cuts"])  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"a design needs arch, route and cuts [[position, bottleneck, bits]]: "
                         f"{exc}") from None
    return check_design(Design(arch, route, cuts))


def load_design(text: str, scenario: Scenario, *, row: int = 0,
                splits: str | None = None) -> AnyDesign:
    """``text`` is a design JSON file, a ``front.csv`` (take row ``row``, 0 = the first), or an
    architecture (see :func:`models.resolve.resolve_architecture`) with ``splits``: comma-separated
    block positions, one per hop of the scenario's path, plain cuts (fewer positions: the request
    ends early, the rest of the path idle); a position may carry a compression as in a design's
    description (``8:0.5x8b``: half the channels, 8 bits). ``splits`` with states separated by
    ``|`` (worst channel first, e.g. ``8:0.5x8b|0``) gives a split policy on the scenario's
    path."""
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
        return policy_from_description(resolve_architecture(rows[row]["arch"]),
                                       rows[row]["design"])
    if path.suffix == ".json" and path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and ("route" in data or "states" in data):
            return design_from_dict(data)
    arch = resolve_architecture(text)
    hops = len(scenario.path) - 1
    if splits is None and hops == 0:
        splits = ""
    if splits is None:
        raise ValueError(f"--design {text} is an architecture: give --splits P1,P2,... "
                         f"(block positions 0..{arch.n_blocks}, one per hop)")
    states = [_split_design(arch, scenario, part) for part in splits.split("|")]
    return states[0] if len(states) == 1 else PolicyDesign(tuple(states))


_SPLIT = re.compile(r"^(\d+)(?::(\d+(?:\.\d+)?)x(\d+)b)?$")


def _split_design(arch: ArchSpec, scenario: Scenario, splits: str) -> Design:
    hops = len(scenario.path) - 1
    cuts = []
    for item in filter(None, (p.strip() for p in splits.split(","))):
        m = _SPLIT.match(item)
        if m is None:
            raise ValueError(f"--splits: each cut is a block position, optionally compressed as "
                             f"POSITION:BOTTLENECKxBITSb (e.g. 8:0.5x8b); cuts are separated by "
                             f"commas and states by |; got {item!r} in {splits!r}")
        p = int(m.group(1))
        if m.group(2) is not None and not 0 < p < arch.n_blocks:
            raise ValueError(f"--splits: {item!r} compresses at {p}; a compression goes strictly "
                             f"between blocks, at 1..{arch.n_blocks - 1}")
        try:
            cuts.append(Cut(p) if m.group(2) is None
                        else Cut(p, float(m.group(2)), int(m.group(3))))
        except ValueError as exc:
            raise ValueError(f"--splits: {item!r}: {exc}") from None
    if len(cuts) > hops:
        raise ValueError(f"--splits: the path {scenario.path} has {hops} hop(s), "
                         f"got {len(cuts)} positions")
    cuts += [Cut(arch.n_blocks)] * (hops - len(cuts))
    return check_design(Design(arch, tuple(scenario.path), tuple(cuts)))


def _saved_policy(text: str) -> dict[str, Any] | None:
    path = Path(text)
    if path.suffix != ".json" or not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    policy = data.get("policy") if isinstance(data, dict) else None
    return policy if isinstance(policy, dict) else None


def load_routing(text: str, scenario: Scenario, *, row: int = 0, splits: str | None = None,
                 policy_states: int | None = None,
                 observe_delay_s: float | None = None) -> Routing:
    """:func:`load_design` and, for a split policy, its states and observation delay: given, or
    else those the design JSON a deployment wrote records, or else those of the search whose
    ``front.csv`` the design comes from (its ``config.yaml``), or else one state per design
    state and no delay."""
    design = load_design(text, scenario, row=row, splits=splits)
    saved_policy = _saved_policy(text)
    if isinstance(design, PolicyDesign) and saved_policy is not None and policy_states is None:
        # a design.json written by a deployment: the very thresholds it ran with
        try:
            link = tuple(str(n) for n in saved_policy["link"])
            shares = saved_policy.get("shares")
            return Routing(design.states, tuple(float(t) for t in saved_policy["thresholds_bps"]),
                           (link[0], link[1]),
                           float(saved_policy["observe_delay_s"]) if observe_delay_s is None
                           else observe_delay_s,
                           None if shares is None else tuple(float(x) for x in shares))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"--design {text}: its policy needs link, thresholds_bps and "
                             f"observe_delay_s: {exc}") from None
    if isinstance(design, Design):
        if policy_states is not None or observe_delay_s is not None:
            raise ValueError("--policy-states and --observe-delay set a split policy's states; "
                             f"--design {text} is one design (give --splits with states "
                             "separated by |, or a policy design)")
        return Routing((design,))
    saved = Path(text).parent if Path(text).suffix == ".csv" else None
    if saved is not None and (saved / "config.yaml").exists() and (
            policy_states is None or observe_delay_s is None):
        config = read_run_config(saved).config
        if policy_states is None:
            policy_states = config.policy_states
        if observe_delay_s is None:
            observe_delay_s = config.policy_observe_delay_s
    return Routing.of(design, scenario, policy_states=policy_states,
                      observe_delay_s=observe_delay_s or 0.0)
