"""Scenario files: the examples load; every bad file is refused with one line naming the field."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sim import ScenarioError, load_scenario, scenario_from_dict
from sim.scenario import RayleighChannel

from .conftest import EXAMPLES, three_tier


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_examples_load(path: Path) -> None:
    s = load_scenario(path)
    assert s.pipeline
    assert s.graph().number_of_nodes() == len(s.nodes)


def test_numbers_like_20e6_are_floats(tmp_path: Path) -> None:
    text = yaml.safe_dump(three_tier()).replace("10000000.0", "10e6")
    assert "10e6" in text
    f = tmp_path / "s.yaml"
    f.write_text(text)
    s = load_scenario(f)
    assert s.links[0].channel.rate_bps == 10e6  # type: ignore[union-attr]


_SNIPPETS = ["a: 20e6\nb: [1, .5, -.inf, 1_000, 1e, +2.5E-3]\nc: 0x10\nd: yes\ne: ~\n",
             "k: 'quoted: 1'\nl: |\n  two\n  lines\nm: {x: [1, {y: 2}]}\n",
             "n: 2026-12-08\no: 1:30\np: &a [1]\nq: *a\nr: \"\\u00e9\"\n"]
_NOT_YAML = ["nodes: [unclosed\n", "a: 1\n b: 2\n", "a: b: c\n", "- a\nb: 1\n",
             "k: [1, 2\nl: 3\n", "a: 'open\n\n\n"]


def test_the_fast_yaml_parser_reads_what_the_pure_python_one_reads() -> None:
    """Scenario files are parsed with libyaml's parser where PyYAML has it; PyYAML's pure
    Python parser, given the same float rule, is the reference: the same values for every
    shipped scenario and for numbers, anchors, block text and dates, and a refusal of the
    same six broken documents, at the same line."""
    from sim.scenario import _Loader, load_yaml

    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml: the pure Python parser is the one in use")
    assert issubclass(_Loader, yaml.CSafeLoader)
    reference = type("Reference", (yaml.SafeLoader,),
                     {"yaml_implicit_resolvers": _Loader.yaml_implicit_resolvers})
    texts = [p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*.yaml"))]
    for text in [*texts, *_SNIPPETS]:
        assert load_yaml(text) == yaml.load(text, Loader=reference)
    assert load_yaml(_SNIPPETS[0])["a"] == 20e6
    for text in _NOT_YAML:
        with pytest.raises(yaml.YAMLError) as fast:
            load_yaml(text)
        with pytest.raises(yaml.YAMLError) as slow:
            yaml.load(text, Loader=reference)
        assert fast.value.problem_mark.line == slow.value.problem_mark.line, text  # type: ignore[attr-defined]


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def refused(tmp_path: Path, data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, data))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "bad.yaml"))
    return message


def test_unknown_key(tmp_path: Path) -> None:
    d = three_tier()
    d["nodes"]["edge"]["gpus"] = 2
    assert "nodes.edge.gpus: unknown key" in refused(tmp_path, d)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert "wrkload: unknown key" in refused(tmp_path, three_tier(wrkload={}))


def test_negative_rate(tmp_path: Path) -> None:
    d = three_tier()
    d["links"][0]["channel"]["rate_bps"] = -5.0
    msg = refused(tmp_path, d)
    assert "links[0].channel.rate_bps" in msg and "greater than 0" in msg and "-5.0" in msg


def test_negative_node_rate(tmp_path: Path) -> None:
    d = three_tier()
    d["nodes"]["phone"]["flops_per_s"] = 0
    assert "nodes.phone.flops_per_s: Input should be greater than 0" in refused(tmp_path, d)


def test_missing_key(tmp_path: Path) -> None:
    d = three_tier()
    del d["links"][0]["channel"]["rate_bps"]
    assert "links[0].channel.rate_bps: required key is missing" in refused(tmp_path, d)


def test_unknown_channel_model(tmp_path: Path) -> None:
    d = three_tier()
    d["links"][0]["channel"] = {"model": "rician", "k": 3}
    msg = refused(tmp_path, d)
    assert "links[0].channel" in msg and "rician" in msg and "rayleigh" in msg


def test_link_to_missing_node(tmp_path: Path) -> None:
    d = three_tier()
    d["links"][1]["dst"] = "clod"
    msg = refused(tmp_path, d)
    assert "links[1].dst: unknown node 'clod' (nodes: " in msg and "phone" in msg


def test_path_not_connected(tmp_path: Path) -> None:
    assert "path: no link phone -> cloud" in refused(
        tmp_path, three_tier(path=["phone", "cloud"]))


def test_path_through_unknown_node(tmp_path: Path) -> None:
    assert "path[1]: unknown node 'fog'" in refused(tmp_path, three_tier(path=["phone", "fog"]))


def test_pipeline_stage_on_missing_node(tmp_path: Path) -> None:
    d = three_tier()
    d["pipeline"][2] = {"compute": "edge2", "flops": 1e9}
    assert "pipeline[2]: unknown node 'edge2'" in refused(tmp_path, d)


def test_pipeline_stage_on_missing_link(tmp_path: Path) -> None:
    d = three_tier()
    d["pipeline"][3] = {"transfer": ["cloud", "edge"], "bits": 1e3}
    assert "pipeline[3]: no link cloud -> edge" in refused(tmp_path, d)


def test_pipeline_stage_without_kind(tmp_path: Path) -> None:
    d = three_tier()
    d["pipeline"][0] = {"run": "phone", "flops": 1e9}
    assert "pipeline[0]: a stage needs a 'compute: NODE' or a 'transfer: [SRC, DST]'" in refused(
        tmp_path, d)


def test_training_mode_needs_reverse_links(tmp_path: Path) -> None:
    d = three_tier()
    d["workload"]["mode"] = "training"
    msg = refused(tmp_path, d)
    assert "backward pass of training mode" in msg and "no link cloud -> edge" in msg
    d["links"][0]["duplex"] = True
    d["links"][1]["duplex"] = True
    assert load_scenario(write(tmp_path, d)).workload.mode == "training"


def test_other_sources_need_their_own_link(tmp_path: Path) -> None:
    d = three_tier()
    d["nodes"]["tablet"] = {"kind": "device", "flops_per_s": 1e9}
    d["workload"]["sources"] = ["phone", "tablet"]
    assert "workload.sources[1]: no link tablet -> edge" in refused(tmp_path, d)


def test_first_source_is_the_path_start(tmp_path: Path) -> None:
    d = three_tier()
    d["workload"]["sources"] = ["edge"]
    assert "workload.sources[0]: must be the first node of the path" in refused(tmp_path, d)


def test_warmup_must_leave_tasks(tmp_path: Path) -> None:
    d = three_tier()
    d["workload"]["warmup_tasks"] = 500
    assert "workload.warmup_tasks: must be less than tasks (500)" in refused(tmp_path, d)


def test_duplicate_link(tmp_path: Path) -> None:
    d = three_tier()
    d["links"][0]["duplex"] = True
    d["links"].append({"src": "edge", "dst": "phone", "channel": {"model": "constant",
                                                                  "rate_bps": 1e6}})
    assert "links[2]: a second link edge -> phone" in refused(tmp_path, d)


def test_missing_trace_file(tmp_path: Path) -> None:
    d = three_tier()
    d["links"][0]["channel"] = {"model": "trace", "file": "nowhere.csv"}
    msg = refused(tmp_path, d)
    assert "links[0].channel.file: bad rate trace" in msg and "nowhere.csv" in msg


def test_bad_trace_columns(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("t,rate\n0,1\n1,2\n")
    d = three_tier()
    d["links"][0]["channel"] = {"model": "trace", "file": "t.csv"}
    assert "columns must be time_s,rate_bps" in refused(tmp_path, d)


def test_trace_relative_to_scenario_folder(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("time_s,rate_bps\n0,1e6\n1,2e6\n")
    d = three_tier()
    d["links"][0]["channel"] = {"model": "trace", "file": "t.csv"}
    assert load_scenario(write(tmp_path, d)).resolve("t.csv") == tmp_path / "t.csv"


def test_arrival_file_with_unknown_source(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("time_s,source\n0.1,phone\n0.2,watch\n")
    d = three_tier()
    d["workload"]["arrivals"] = {"process": "file", "file": "a.csv"}
    assert "workload.arrivals.file: bad arrival file" in refused(tmp_path, d)


def test_not_yaml(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("nodes: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML at line"):
        load_scenario(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read scenario file"):
        load_scenario(tmp_path / "absent.yaml")


def test_rayleigh_defaults_and_snr() -> None:
    d = three_tier()
    d["links"][0]["channel"] = {"model": "rayleigh", "bandwidth_hz": 20e6, "tx_power_dbm": 23,
                                "distance_m": 100, "coherence_s": 0.05}
    ch = scenario_from_dict(d).links[0].channel
    assert isinstance(ch, RayleighChannel)
    assert ch.noise_dbm_hz == -174.0 and ch.shadowing_db == 0.0
    assert ch.snr_linear() > 1.0


def test_arrival_file_with_a_short_row(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("source,time_s\nphone,1\nphone\n")
    d = three_tier()
    d["workload"]["arrivals"] = {"process": "file", "file": "a.csv"}
    assert "line 3: time_s must be a number" in refused(tmp_path, d)


def test_arrival_file_shorter_than_the_warmup(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("time_s\n0.1\n0.2\n0.3\n")
    d = three_tier()
    d["workload"]["arrivals"] = {"process": "file", "file": "a.csv"}
    d["workload"]["warmup_tasks"] = 10
    msg = refused(tmp_path, d)
    assert "workload.arrivals.file: 3 arrival(s) for source 'phone'" in msg


def test_a_node_written_with_the_old_flops_key_is_read_with_one_warning(tmp_path: Path) -> None:
    """``flops``, the old name of a node's ``flops_per_s``, still reads as the same scenario,
    with one ScenarioDeprecation for the file; a node with both keys is refused, naming it;
    the command line shows the warning as one line."""
    import warnings

    from sim.scenario import ScenarioDeprecation

    d = three_tier()
    old = copy.deepcopy(d)
    for node in old["nodes"].values():
        node["flops"] = node.pop("flops_per_s")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert scenario_from_dict(old) == scenario_from_dict(d)
    assert [w.category for w in caught] == [ScenarioDeprecation], caught
    assert "nodes.phone.flops and others: the key is now flops_per_s" in str(caught[0].message)
    both = copy.deepcopy(d)
    both["nodes"]["edge"]["flops"] = 1e9
    with pytest.raises(ScenarioError, match=r"nodes\.edge: give flops_per_s only"):
        scenario_from_dict(both)
    from experiments.common import scenario_variant

    with pytest.warns(ScenarioDeprecation, match="override 'nodes.phone.flops'"):
        varied = scenario_variant("three-tier", {"nodes.phone.flops": 2e9})
    assert varied.nodes["phone"].flops_per_s == 2e9  # an experiment config's old override
    path = tmp_path / "old.yaml"
    text = (EXAMPLES / "three-tier.yaml").read_text().replace("flops_per_s:", "flops:")
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "jmsnas", "simulate", str(path), "--tasks",
                           "300", "--replications", "1"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "flops_per_s" in line]
    assert warned == [f"jmsnas: warning: {path}: nodes.phone.flops and others: the key is now "
                      f"flops_per_s (FLOP/s of one server); read as that, rename it"], done.stderr
