"""Bad input by the thousand (hypothesis): scenario files with their arrival and trace files,
genomes and design strings. Each case either is accepted or ends in the documented error, a
one-line message that names the file and the field; never another exception, never a hang.

The numbers of cases are fixed (``max_examples``) and the generation is derandomised, so a run
is the same everywhere; each case has a time limit (a hang fails as a TimeoutError), and each
test checks that its cases were both accepted and refused, so a generator that only produces
one kind cannot pass unnoticed. About two minutes in all on two cores.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jmsnas.main import main
from sim import ScenarioError, load_scenario

from .conftest import EXAMPLES


def cases(n: int) -> settings:
    """``n`` generated cases, the same on every run (no example database, no deadline)."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


BASE: dict[str, Any] = yaml.safe_load((EXAMPLES / "three-tier.yaml").read_text())
BASE["workload"]["tasks"], BASE["workload"]["warmup_tasks"] = 40, 5
BASE["links"].append({"src": "cloud", "dst": "edge", "propagation_s": 0.02,
                      "channel": {"model": "trace", "file": "trace.csv", "scale": 1.0}})
ARRIVALS = {"process": "file", "file": "arrivals.csv"}
NAMES = ("phone", "edge", "cloud")


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into ``value`` (containers and leaves)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list) and len(value) <= 20:  # not into a huge list's items
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = copy.deepcopy(value)  # a drawn list must not be changed in the strategy


def _delete(data: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        data = data[key]
    del data[path[-1]]


JUNK = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, -1, 0.0, -0.5, 1e308, -1e308, 2**63]),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", "moon", "phone", "edge", "cloud", "1e9"]),
    st.lists(st.integers(-3, 300), max_size=5), st.builds(list), st.builds(lambda: [0] * 5000),
    st.dictionaries(st.sampled_from(["x", "model", "kind", "file"]), st.integers(-1, 3),
                    max_size=2),
)

OPTIONAL = [(("links", 0, "channel"), k) for k in
            ("shadowing_db", "coherence_s", "carrier_hz", "reference_loss_db",
             "reference_distance_m", "antenna_gain_db", "pathloss_exponent", "noise_figure_db",
             "tx_power_w")] + [
    (("links", 1), "duplex"), (("links", 2, "channel"), "scale"),
    (("nodes", "phone"), "memory_bytes"), (("nodes", "edge"), "power_w"),
    (("workload",), "backward_flops_factor"), (("workload",), "mode"),
    (("pipeline", 2), "cv"), (("pipeline", 2), "distribution")]
"""Keys a scenario may leave out, where they go (junk in them tests the schema's bounds)."""

ROWS = st.lists(st.one_of(
    st.tuples(st.floats(0, 100), st.floats(1e3, 1e9)).map(lambda r: f"{r[0]},{r[1]}"),
    st.sampled_from(["nan,1e6", "-1,1e6", "inf,1e6", "1,-5", "1,nan", "x,y", "1", "",
                     "1,2,3", "0,0", "1e400,1"]),
), max_size=6)


@st.composite
def scenario_files(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """(scenario YAML, arrivals CSV, trace CSV): a valid scenario mutated up to three times
    (a value replaced by junk, a key removed, an unknown key added, a node reference dangling
    or a path made circular), its files good or with bad rows; now and then raw bytes
    instead."""
    data = copy.deepcopy(BASE)
    if draw(st.booleans()):
        data["workload"]["arrivals"] = dict(ARRIVALS)
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["junk", "junk", "delete", "unknown", "dangle", "loop",
                                       "optional"]))
        try:
            if action == "junk":
                _set(data, path, draw(JUNK))
            elif action == "delete":
                _delete(data, path)
            elif action == "unknown":
                target = data
                for key in path:
                    target = target[key]
                if isinstance(target, dict):
                    target[draw(st.sampled_from(["speed", "flop", "x", "Nodes"]))] = 1
            elif action == "optional":  # a key the file may leave out, set to junk
                where, key = draw(st.sampled_from(OPTIONAL))
                target = data
                for part in where:
                    target = target[part]
                target[key] = draw(st.one_of(JUNK, st.sampled_from(
                    [1e-12, 1e-9, 1e4, 1e300, -1e300])))
            elif action == "dangle":
                _set(data, path, draw(st.sampled_from(["moon", "Phone", " edge", ""])))
            else:
                data["path"] = list(draw(st.sampled_from([
                    ("phone", "edge", "phone"), ("edge", "cloud", "edge"), ("phone",),
                    ("phone", "cloud"), ()])))
        except (KeyError, IndexError, TypeError):
            pass  # the path went away with an earlier mutation
    # libyaml's emitter where PyYAML has it: the pure Python one took 16 of this file's 50 s
    text = yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                     allow_unicode=True).encode()
    if draw(st.integers(0, 19)) == 0:
        text = draw(st.sampled_from([b"\xff\xfe\x00bad", text[: len(text) // 2],
                                     b"nodes: [1, 2", b"- a\n- b\n", b"", text + b"\xc3"]))
    good_arrivals = [f"{0.1 * k:.1f}" for k in range(50)]
    arrivals = "\n".join(["time_s", *(good_arrivals if draw(st.booleans())
                                       else draw(ROWS))]).encode()
    trace = "\n".join(["time_s,rate_bps", *(["0,5e6", "0.5,2e7"] if draw(st.booleans())
                                             else draw(ROWS))]).encode()
    if draw(st.integers(0, 9)) == 0:
        trace = draw(st.sampled_from([b"\xff\xfe", b"rate_bps\n1e6", b""]))
    return text, arrivals, trace


def _one_line_naming(message: str, file: Path) -> None:
    """The documented form of a scenario error: one line, starting with the file, then a field
    (a key path) or what is wrong with the file as a whole; bounded in length."""
    assert "\n" not in message.strip() and len(message) < 600, message
    assert message.startswith(f"{file}: "), message
    rest = message[len(f"{file}: "):]
    assert re.match(r"([\w\[\]().\- ]+: |not valid YAML|not UTF-8|cannot read|a scenario must)",
                    rest), message


def _write(folder: Path, case: tuple[bytes, bytes, bytes]) -> Path:
    text, arrivals, trace = case
    (folder / "arrivals.csv").write_bytes(arrivals)
    (folder / "trace.csv").write_bytes(trace)
    path = folder / "scenario.yaml"
    path.write_bytes(text)
    return path


@contextlib.contextmanager
def _at_most(seconds: float) -> Iterator[None]:
    """A case that runs longer fails as a TimeoutError (a hang would otherwise hang CI)."""
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a case ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_thousand_broken_scenario_files_load_or_name_the_field(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """1,000 generated scenario files through :func:`sim.load_scenario`, 10 s each at most: a
    Scenario, or a ScenarioError in one line naming the file and the field. Both occur: at
    least 2% of the files are accepted (about 5%) and most are refused, over at least 40
    distinct fields."""
    outcomes: collections.Counter[str] = collections.Counter()

    @cases(1000)
    @given(case=scenario_files())
    def one(case: tuple[bytes, bytes, bytes]) -> None:
        path = _write(tmp_path_factory.mktemp("case"), case)
        try:
            with _at_most(10.0):
                load_scenario(path)
        except ScenarioError as exc:
            _one_line_naming(str(exc), path)
            outcomes["refused: " + str(exc)[len(str(path)) + 2:].split(": ")[0]] += 1
        else:
            outcomes["accepted"] += 1

    one()
    total = sum(outcomes.values())
    assert total >= 1000
    assert outcomes["accepted"] >= 0.02 * total, outcomes
    assert total - outcomes["accepted"] >= 0.5 * total, outcomes
    assert len(outcomes) >= 40, outcomes


def test_the_simulate_and_search_commands_refuse_them_in_one_line(
        tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same 1,000 files through ``jmsnas simulate`` (a short run when the file is good:
    exit 0) and through ``jmsnas search``'s checks up to the search itself (which is replaced
    here by a stand-in that stops the command), 20 s a case at most: a bad file exits with
    status 2 and one line, ``jmsnas: error: FILE: FIELD: ...`` (or ``scenario NAME ...`` for
    what only the command needs, such as simulate's pipeline); anything else would raise out
    of the test. At least 2% of the cases run through both commands (about 6%)."""
    import search.nsga

    class Reached(Exception):
        pass

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise Reached

    monkeypatch.setattr(search.nsga, "run_search", stop)  # the command imports it when run
    outcomes: collections.Counter[str] = collections.Counter()

    @cases(1000)
    @given(case=scenario_files())
    def one(case: tuple[bytes, bytes, bytes]) -> None:
        folder = tmp_path_factory.mktemp("case")
        path = _write(folder, case)
        capsys.readouterr()
        with _at_most(20.0):
            status = main(["simulate", str(path), "--tasks", "30", "--warmup", "3",
                           "--replications", "1", "--json"])
        err = capsys.readouterr().err.strip()
        if status != 0:
            assert status == 2, err
            _command_error(err, path)
        outcomes[f"simulate: exit {status}"] += 1
        try:
            with _at_most(20.0):
                status = main(["search", str(path), "--dataset", "mnist5k", "--out",
                               str(folder / "run"), "--quiet", "--generations", "1",
                               "--population", "4"])
        except Reached:
            outcomes["search: reached the search"] += 1
            return
        err = capsys.readouterr().err.strip()
        assert status == 2, err
        _command_error(err, path)
        outcomes["search: exit 2"] += 1

    one()
    total = outcomes["search: exit 2"] + outcomes["search: reached the search"]
    assert total >= 1000
    assert outcomes["simulate: exit 0"] >= 0.02 * total, outcomes
    assert outcomes["search: reached the search"] >= 0.02 * total, outcomes
    assert outcomes["search: exit 2"] >= 0.5 * total, outcomes


def _command_error(err: str, path: Path) -> None:
    """A command's refusal: one line, ``jmsnas: error: ``, then the loader's form (file and
    field) or, for what only the command checks, the scenario and what it lacks."""
    assert err.startswith("jmsnas: error: ") and "\n" not in err and len(err) < 700, err
    message = err.removeprefix("jmsnas: error: ")
    if message.startswith(str(path)):
        _one_line_naming(message, path)
    else:
        assert message.startswith("scenario "), err


GENOME_LAYOUTS: dict[int, Any] = {}


def _layout(states: int) -> Any:
    from models.space import get_space
    from search.design import GenomeLayout, scenario_routes
    from sim import scenario_from_dict

    if states not in GENOME_LAYOUTS:
        scenario = scenario_from_dict({**copy.deepcopy(BASE), "links": BASE["links"][:2]})
        GENOME_LAYOUTS[states] = GenomeLayout(get_space("tiny"), scenario_routes(scenario),
                                              states=states)
    return GENOME_LAYOUTS[states]


def test_a_thousand_genomes_decode_or_are_refused() -> None:
    """1,000 generated genomes through the search's decoding (one and two channel states):
    mostly of the right length with one gene drawn around its bounds (-1, 0, the bound - 1,
    the bound, far beyond) and the others within them, some a gene short or long: a design,
    whose canonical genome decodes back to it, or a ValueError in one line. Both occur (at
    least 20% of each)."""
    outcomes: collections.Counter[str] = collections.Counter()

    @cases(1000)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        layout = _layout(data.draw(st.sampled_from([1, 2])))
        n = data.draw(st.sampled_from([len(layout.bounds)] * 4 + [len(layout.bounds) - 1,
                                                                   len(layout.bounds) + 1, 0]))
        edge = data.draw(st.integers(0, max(n - 1, 0)))  # this gene drawn around its bounds
        genome = [data.draw(st.sampled_from([0, 1, b - 1, b - 1, b - 1, b - 2 if b > 1 else 0,
                                             -1, b, 10**9]) if k == edge else
                            st.integers(0, max(b - 1, 0)))
                  for k, b in enumerate([*layout.bounds, 3, 3][:n])]
        try:
            design = layout.decode_any(genome)
        except ValueError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 600, exc
            outcomes["refused"] += 1
            return
        assert layout.decode_any(layout.encode(design)) == design
        outcomes["decoded"] += 1

    one()
    assert sum(outcomes.values()) >= 1000
    assert min(outcomes["decoded"], outcomes["refused"]) >= 0.2 * sum(outcomes.values()), outcomes


DESIGN_TEXT = st.one_of(
    st.text(alphabet="0123456789,:|x.b -", max_size=16),
    st.lists(st.sampled_from(["0", "2", "4", "9", "99", "4:0.5x8b", "4:0.3x8b", "4:0.5x7b",
                              "0:0.5x8b", "-1", "", " ", "a", "4:", "1e3"]),
             max_size=4).map(",".join),
    st.lists(st.sampled_from(["2,4", "4", "", "9,9", "2:0.25x8b,4"]), min_size=2,
             max_size=3).map("|".join),
)


def test_a_thousand_design_strings_parse_or_are_refused() -> None:
    """1,000 generated ``--design`` / ``--splits`` pairs through ``deploy``'s design parsing
    (:func:`deploy.designs.load_design`): a design on the scenario's path with its cuts in
    order, or a ValueError in one line. Both occur (at least 5% parse; about 12%)."""
    from deploy.designs import load_design
    from sim import scenario_from_dict

    scenario = scenario_from_dict({**copy.deepcopy(BASE), "links": BASE["links"][:2]})
    outcomes: collections.Counter[str] = collections.Counter()

    @cases(1000)
    @given(design=st.sampled_from(["tiny-000000000", "tiny-000111222", "tiny-999", "resnet18",
                                   "nosuchmodel", "tiny-", "", "front.csv", "design.json"]),
           splits=DESIGN_TEXT)
    def one(design: str, splits: str) -> None:
        try:
            got = load_design(design, scenario, splits=splits)
        except ValueError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 600, exc
            outcomes["refused"] += 1
            return
        states = getattr(got, "states", (got,))
        assert all(tuple(s.route) == tuple(scenario.path) for s in states)
        assert all(np.all(np.diff([c.position for c in s.cuts]) >= 0) for s in states)
        outcomes["parsed"] += 1

    one()
    total = sum(outcomes.values())
    assert total >= 1000 and outcomes["parsed"] >= 0.05 * total, outcomes
    assert outcomes["refused"] >= 0.5 * total, outcomes
