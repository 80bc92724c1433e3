"""The ``jmsnas simulate`` command line, as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main

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
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "simulate", str(bad)],
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
