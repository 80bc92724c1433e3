"""The ``jmsnas`` command line, as a user runs it."""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jmsnas.main import main

from .conftest import EXAMPLES

JSON_FIELDS = {"mean_latency_s", "p50_latency_s", "p95_latency_s", "p99_latency_s",
               "ci95_half_width_s", "throughput_hz", "tasks", "stages"}


def test_simulate_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(EXAMPLES / "three-tier.yaml"), "--json", "--tasks", "400",
                 "--replications", "2", "--seed", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert JSON_FIELDS <= set(out)
    assert out["tasks"] == 2 * (400 - 200)
    assert out["ci_method"] == "replications"
    stage = out["stages"][1]
    assert stage["label"] == "transfer phone->edge"
    assert {"waiting_s", "service_s", "propagation_s"} <= set(stage)
    assert out["p50_latency_s"] <= out["p95_latency_s"] <= out["p99_latency_s"]


def test_simulate_by_example_name_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "shared-edge", "--tasks", "200", "--engine", "auto"]) == 0
    out = capsys.readouterr().out
    assert "completion latency" in out and "phone4->edge" in out and "engine fast" in out


SHIPPED = sorted(p.name.removesuffix(".yaml") for p in EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("scenario", SHIPPED)
def test_simulate_table_shows_every_name_in_full(scenario: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Catches a cut name (issue 14: ``phone1->edge, phone2->ed`` in shared-edge): every stage
    row holds its label and its resources in full, in their columns, with the numbers the JSON
    gives; every resource row likewise."""
    assert main(["simulate", scenario, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["simulate", scenario]) == 0
    lines = capsys.readouterr().out.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("  stage ")]
    assert len(heads) == 1
    head = lines[heads[0]]
    rows = lines[heads[0] + 1: heads[0] + 1 + len(report["stages"])]
    for row, st in zip(rows, report["stages"], strict=True):
        numbers = [f"{st[k] * 1e3:.3f}" for k in ("waiting_s", "service_s", "propagation_s")]
        m = re.fullmatch(rf"  {re.escape(st['label'])} +({re.escape(', '.join(st['resources']))})"
                         + "".join(rf" +{re.escape(x)}" for x in numbers), row)
        assert m is not None, row
        assert m.start(1) == head.index("resource")
    start = lines.index(next(line for line in lines if line.startswith("  resource ")))
    for row, q in zip(lines[start + 1:], report["resources"], strict=False):
        cells = [q["name"], q["kind"], str(q["servers"]), f"{q['offered_utilisation']:.3f}",
                 f"{q['utilisation']:.3f}", f"{q['energy_j_per_task']:.4f}"]
        assert re.fullmatch("  " + " +".join(map(re.escape, cells)) + "( +overloaded)?",
                            row), row


def test_simulate_training_labels_the_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches split learning's two ``compute@edge`` rows with nothing saying which pass is which
    (issue 14), in the table, the JSON and the timeline."""
    labels = ["compute@phone (forward)", "transfer phone->edge (forward)",
              "compute@edge (forward)", "compute@edge (backward)",
              "transfer edge->phone (gradient)", "compute@phone (backward)"]
    assert main(["simulate", "split-learning"]) == 0
    table = capsys.readouterr().out.splitlines()
    start = table.index(next(line for line in table if line.startswith("  stage ")))
    assert [line[2:].split("  ")[0] for line in table[start + 1: start + 7]] == labels
    assert main(["simulate", "split-learning", "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert [st["label"] for st in stages] == labels
    assert [st["phase"] for st in stages] == ["forward"] * 3 + ["backward"] * 3


def test_simulate_training_numbers_are_the_ones_before_the_labels(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Golden: ``jmsnas simulate split-learning --json --seed 3`` as printed before stages named
    their pass (issue 14); labelling them changed no number."""
    assert main(["simulate", "split-learning", "--json", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == 950
    assert out["mean_latency_s"] == pytest.approx(0.1810166195640672, rel=1e-12)
    assert out["p99_latency_s"] == pytest.approx(0.5479708754903737, rel=1e-12)
    assert [st["service_s"] for st in out["stages"]] == pytest.approx(
        [0.004999999999999917, 0.08221330091491133, 0.00029999999999999954,
         0.0005999999999999991, 0.07788603742069813, 0.009999999999999834], rel=1e-12)
    assert [st["waiting_s"] for st in out["stages"]] == pytest.approx(
        [0.00012019206778510082, 0.0008536960787868664, 0.0, 0.0, 6.365149442735018e-06,
         3.702793244075876e-05], rel=1e-12, abs=1e-15)


def test_simulate_timeline_labels_training_stages(tmp_path: Path) -> None:
    target = tmp_path / "timeline.csv"
    assert main(["simulate", "split-learning", "--tasks", "60", "--warmup", "10",
                 "--timeline", str(target)]) == 0
    rows = list(csv.DictReader(target.open()))
    assert [r["label"] for r in rows[:6]] == [
        "compute@phone (forward)", "transfer phone->edge (forward)", "compute@edge (forward)",
        "compute@edge (backward)", "transfer edge->phone (gradient)", "compute@phone (backward)"]


def test_simulate_writes_a_timeline(tmp_path: Path) -> None:
    target = tmp_path / "timeline.csv"
    assert main(["simulate", "three-tier", "--tasks", "250", "--timeline", str(target)]) == 0
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 250 * 5
    assert rows[0]["label"] == "compute@phone"
    assert float(rows[0]["end_s"]) >= float(rows[0]["start_s"]) >= float(rows[0]["queued_s"])


def test_bad_scenario_is_one_line_on_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "three-tier.yaml").read_text().replace("rate_bps: 400e6",
                                                                      "rate_bps: -1"))
    proc = subprocess.run([sys.executable, "-m", "jmsnas", "simulate", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "links[1].channel.rate_bps" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_argument_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", "three-tier", "--tasks", "0"])
    assert info.value.code == 2
    assert "--tasks: must be >= 1" in capsys.readouterr().err


def test_fast_engine_refusal_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "split-learning", "--engine", "fast"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jmsnas: error: the fast evaluator needs") and err.count("\n") == 1


def test_profile_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "mobilenet_v2", "--input-shape", "3", "224", "224"]) == 0
    out = capsys.readouterr().out
    assert "0.301 G multiply-adds" in out and "3.505 M parameters" in out
    assert main(["profile", "tiny:0,1,0,1,0,0,0,0,0", "--input-shape", "1", "28", "28",
                 "--classes", "10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["arch"] == "tiny-010100000" and data["num_classes"] == 10
    assert sum(b["flops"] for b in data["blocks"]) == data["total_flops"]
    assert data["blocks"][-1]["out_shape"] == [10]


def test_profile_by_name_and_file_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.resolve import resolve_architecture

    spec = resolve_architecture("tiny-010100000")
    assert spec == resolve_architecture("tiny:0,1,0,1,0,0,0,0,0")
    f = tmp_path / "arch.json"
    f.write_text(spec.to_json())
    assert resolve_architecture(str(f)) == spec


@pytest.mark.parametrize(("model", "message"), [
    ("vgg19", "is not a reference model"),
    ("tiny:0,1", "a genome has 9 architecture genes, got 2"),
    ("tiny:a,b", "genes must be integers"),
])
def test_profile_bad_model_is_one_line(model: str, message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", model, "--input-shape", "3", "32", "32"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"jmsnas {metadata.version('jmsnas')}\n"


def _commands() -> dict[str, argparse.ArgumentParser]:
    from jmsnas.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


@pytest.mark.parametrize("command", ["", "simulate", "profile", "search", "deploy", "node",
                                     "experiment"])
def test_every_help_shows_every_default(command: str) -> None:
    """Catches an option added without its default in ``--help`` (flags are off by default and
    say nothing; required options say so)."""
    parser = _commands()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if (not action.option_strings or action.nargs == 0 or action.dest == "help"):
            continue  # positionals, flags (store_true), -h
        text = formatter._get_help_string(action) or ""
        assert ("default" in text) or (action.required and "required" in text), \
            f"{command} {action.option_strings[0]}: {text!r}"
    assert "%(default)s" not in parser.format_help()


def test_search_help_states_the_configuration_defaults() -> None:
    """Catches the search's written-out defaults drifting from SearchConfig's."""
    from jmsnas.search import CONFIG_DEFAULTS
    from search.config import SearchConfig

    cfg = SearchConfig()
    for name, shown in CONFIG_DEFAULTS.items():
        actual = getattr(cfg.budget if name in ("epochs", "subset") else cfg, name)
        assert actual == shown, name
    text = _commands()["search"].format_help().replace("\n", " ")
    for name in ("population", "generations", "epochs", "subset", "seed"):
        assert f"(default: {CONFIG_DEFAULTS[name]}, or the --config file's)" \
            in " ".join(text.split()), name


def test_experiment_help_names_every_experiment() -> None:
    from experiments.runner import EXPERIMENTS
    from jmsnas.experiment import NAMES

    assert NAMES.split(", ") == list(EXPERIMENTS)


def test_simulate_warmup_option(capsys: pytest.CaptureFixture[str]) -> None:
    """--warmup replaces the scenario's warm-up: fewer tasks than it now run."""
    assert main(["simulate", "three-tier", "--tasks", "100", "--warmup", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 80
    assert main(["simulate", "three-tier", "--tasks", "300", "--warmup", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 300


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "100"], "jmsnas: error: --tasks 100 must exceed the warm-up (200 tasks, the "
     "scenario's workload.warmup_tasks): add --warmup 10 or raise --tasks above 200"),
    (["--tasks", "50", "--warmup", "50"], "jmsnas: error: --tasks 50 must exceed the warm-up "
     "(50 tasks, --warmup): add --warmup 5 or raise --tasks above 50"),
    (["--warmup", "2000"], "jmsnas: error: --warmup 2000 must be less than the scenario's 2000 "
     "tasks (workload.tasks): lower --warmup or add --tasks 4000"),
])
def test_too_few_tasks_suggests_the_fix(args: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "three-tier", *args]) == 2
    assert capsys.readouterr().err == message + "\n"


def test_suggested_fix_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The fix the error names is a command that works."""
    assert main(["simulate", "three-tier", "--tasks", "100"]) == 2
    fix = capsys.readouterr().err.split("add ")[1].split(" or ")[0].split()
    assert main(["simulate", "three-tier", "--tasks", "100", *fix]) == 0
