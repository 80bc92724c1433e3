"""``jmsnas search`` as a user runs it: progress on stderr, run folders that never trap,
``--resume DIR`` alone, readable results and the chance-accuracy warning (issue 14).

The searches are tiny (digits, 64 images, one epoch, four designs a generation, nothing
re-measured): every design stays at chance, which the warning test wants anyway.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jmsnas.main import main
from search.config import SearchConfig
from search.design import GenomeLayout, hosts, scenario_routes
from search.evaluate import Evaluation
from search.nsga import SearchResult, _Search, fingerprint
from search.outputs import chance_warning
from search.progress import PROGRESS_FIELDS, SearchProgress
from search.runs import config_differences, default_run_folder, folder_state, read_run_config
from sim import load_scenario

from .conftest import EXAMPLES

FAST = """noise_architectures: 0
remeasure_replications: 0
test_accuracy: false
sim_tasks: 100
budget: {width_scale: 0.25, batch_size: 32}
"""
"""Settings only a --config file sets: what a tiny search can leave out or make smaller."""


def _command(tmp_path: Path, scenario: str = "three-tier", generations: int = 1) -> list[str]:
    config = tmp_path / "fast.yaml"
    config.write_text(FAST)
    return ["search", scenario, "--config", str(config), "--population", "4", "--generations",
            str(generations), "--epochs", "1", "--subset", "64", "--executor", "serial",
            "--dataset", "digits"]


def _progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if re.match(r"jmsnas search: generation \d", line)]


def _front_csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "front.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_same_command_twice_and_an_edited_copy_all_succeed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Catches a second run that stops on the first one's folder, a folder named after the
    scenario's ``name:`` field instead of its file, progress that is silent on a non-terminal
    (or not silenced by --quiet), a printed front without architectures, and a search at chance
    that does not say so."""
    monkeypatch.chdir(tmp_path)
    cmd = _command(tmp_path)
    assert main(cmd) == 0
    first = capsys.readouterr()
    lines = _progress_lines(first.err)
    assert [line.split(":")[1] for line in lines] == [" generation 0/1", " generation 1/1"]
    for line, designs in zip(lines, (4, 8), strict=True):
        assert f"{designs} designs evaluated" in line and "feasible" in line
        assert re.search(r"\d+ trained \+ \d+ cached, \d+ to go", line)
        assert "best accuracy 0." in line and "lowest latency" in line and "elapsed" in line
    assert "left" in lines[0]  # an estimate once one generation has run
    run1 = tmp_path / "runs" / "search-three-tier-seed0"
    rows = _front_csv(run1)
    printed = [line for line in first.out.splitlines() if "phone[" in line]
    assert rows and len(printed) == len(rows)
    for row, line in zip(rows, printed, strict=True):  # the same order: by latency
        assert row["arch"] in line and row["design"] in line
    warnings = [line for line in first.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "chance" in warnings[0] and "too small for digits" in warnings[0]

    assert main(cmd) == 0  # the same command again: a new folder beside the first
    second = capsys.readouterr()
    run2 = tmp_path / "runs" / "search-three-tier-seed0-2"
    assert _front_csv(run2) and f"results in {run2.relative_to(tmp_path)}/" in second.out
    assert f"this run goes to {run2.relative_to(tmp_path)}" in second.err
    # it starts from a copy of the first run's accuracy cache: nothing is trained again
    assert _progress_lines(second.err) and all(
        " 0 trained + " in line for line in _progress_lines(second.err))
    assert _front_csv(run1) == rows  # the first run untouched

    edited = tmp_path / "my" / "edited.yaml"  # a copy keeps name: three-tier
    edited.parent.mkdir()
    edited.write_text((EXAMPLES / "three-tier.yaml").read_text())
    assert main([*_command(tmp_path, str(edited)), "--quiet"]) == 0
    third = capsys.readouterr()
    assert _front_csv(tmp_path / "runs" / "search-edited-seed0")
    assert _progress_lines(third.err) == []
    assert [line for line in third.err.splitlines() if "warning" in line] == warnings


def test_resume_dir_alone_continues_an_interrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Catches ``--resume DIR`` that needs the original options again (or ignores a flag that
    contradicts the run), and --json progress or results that are not JSON with the
    documented fields. The interruption is a Ctrl-C right after generation 1's checkpoint."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    save = _Search.save

    def interrupted(self: _Search, generation: int, population: Any) -> None:
        save(self, generation, population)
        if generation == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Search, "save", interrupted)
    assert main([*_command(tmp_path, generations=2), "--out", str(out)]) == 130
    monkeypatch.undo()
    with open(out / "checkpoint.pkl", "rb") as fh:
        assert pickle.load(fh)["generation"] == 1
    assert not (out / "front.csv").exists()
    saved = read_run_config(out)
    assert saved.scenario == (EXAMPLES / "three-tier.yaml").resolve()
    assert saved.config.generations == 2 and saved.config.dataset == "digits"
    assert saved.config.workers == 1  # serial: the cores are the default of a local pool only
    s, config = load_scenario(saved.scenario), saved.config
    assert folder_state(out, fingerprint(s, config)) == "unfinished"  # a rerun continues it
    capsys.readouterr()

    assert main(["search", "--resume", str(out), "--population", "6", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--population 6 (the run's: 4)" in err
    assert "--epochs" not in err  # it agrees
    partial = tmp_path / "partial.yaml"  # what it leaves out is the run's, not the defaults
    partial.write_text("population: 6\nbudget: {epochs: 1}\n", encoding="utf-8")
    assert main(["search", "--resume", str(out), "--config", str(partial)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"population in --config {partial} 6 (the run's: 4)" in err
    assert "budget" not in err and "remeasure" not in err and "noise" not in err, err

    assert main(["search", "--resume", str(out), "--json", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.err.splitlines()]
    progress = [e for e in events if e["event"] == "generation"]
    assert [e["generation"] for e in progress] == [2]  # resumed after generation 1
    assert set(progress[0]) == set(PROGRESS_FIELDS)
    assert progress[0]["evaluated"] == 12 and progress[0]["designs_left"] == 0
    assert progress[0]["generations"] == 2 and progress[0]["eta_s"] == 0
    assert {e["event"] for e in events} <= {"note", "warning", "generation"}
    result = json.loads(captured.out)
    assert result["out"] == str(out) and result["evaluated"] == 12
    rows = _front_csv(out)
    assert [r["arch"] for r in result["front"]] == [r["arch"] for r in rows]
    assert all(r["hosts"] == list(hosts(r["design"])) for r in result["front"])
    with open(out / "history.csv", newline="") as fh:
        assert [r["generation"] for r in csv.DictReader(fh)] == ["0", "1", "2"]


def test_a_run_that_fails_in_generation_0_leaves_no_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Catches a checkpoint written before the initial population is scored: the rerun of
    the same command would then find a search in its folder."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    cmd = [*_command(tmp_path), "--out", str(out)]

    def fail(self: _Search, genomes: Any) -> None:
        raise ValueError("training failed: out of disk space")

    monkeypatch.setattr(_Search, "evaluate", fail)
    assert main(cmd) == 2
    assert "out of disk space" in capsys.readouterr().err
    assert (out / "config.yaml").exists() and not (out / "checkpoint.pkl").exists()
    assert main(["search", "--resume", str(out)]) == 2
    assert "none was written" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(cmd) == 0  # the same command, in the same folder
    assert _front_csv(out)


# -- the pieces, without a search -------------------------------------------------------------


def test_default_folder_is_named_after_the_scenario_file() -> None:
    assert default_run_folder("my/edited.yaml", 3) == Path("runs/search-edited-seed3")
    assert default_run_folder(EXAMPLES / "camera-lte.yaml", 0) == Path(
        "runs/search-camera-lte-seed0")
    assert default_run_folder("x.yml", 0, root="out") == Path("out/search-x-seed0")


def test_hosts_reads_the_nodes_that_run_blocks() -> None:
    """The parser against the design itself, over random genomes of a three-node scenario
    (compression, empty segments and splits at position 0 included)."""
    assert hosts("phone[0:6] -> edge[6:6] -> cloud[6:9] (6:0.5x8b)") == ("phone", "cloud")
    assert hosts("phone[0:0] -> edge[0:0] -> cloud[0:9]") == ("cloud",)
    from models.space import get_space

    lay = GenomeLayout(get_space("tiny"), scenario_routes(load_scenario(
        EXAMPLES / "three-tier.yaml")))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        d = lay.decode([int(rng.integers(b)) for b in lay.bounds])
        assert hosts(d.describe()) == d.hosts
        seen.add(d.hosts)
    assert len(seen) >= 5  # the draw covers many placements


def _result(accuracies: list[float], sd: float = math.nan,
            archs: list[str] | None = None) -> SearchResult:
    archs = archs or [f"tiny-{i}" for i in range(len(accuracies))]
    evs = {(i,): Evaluation((i,), f"phone[0:{i}] -> edge[{i}:9]", arch, accuracy=a,
                            latency_s=0.01, mean_latency_s=0.01, p95_latency_s=0.01,
                            device_energy_j=0.1, violation=0.0, status="ok", accuracy_sd=sd)
           for i, (a, arch) in enumerate(zip(accuracies, archs, strict=True))}
    return SearchResult(SearchConfig(dataset="mnist5k", budget={"epochs": 1, "subset": 500}),
                        evs, [])


def test_chance_warning_fires_when_most_designs_score_chance() -> None:
    """Ten classes: chance 0.1, counted up to 0.15, or 0.1 + 3 sd when that is larger."""
    text = chance_warning(_result([0.1, 0.12, 0.098, 0.6]))
    assert text is not None and "\n" not in text
    assert text.startswith("3 of 4 trained models score chance accuracy")
    assert "(1 epoch on 500 images) is too small for mnist5k" in text
    assert chance_warning(_result([0.1, 0.12, 0.6, 0.7])) is None  # half is not most
    assert chance_warning(_result([0.82, 0.85, 0.79])) is None
    assert chance_warning(_result([0.16, 0.2, 0.24])) is None
    assert chance_warning(_result([0.16, 0.2, 0.24], sd=0.05)) is not None  # within 3 sd
    # never more than twice chance, however noisy the proxy
    assert chance_warning(_result([0.21, 0.3, 0.6], sd=0.3)) is None
    assert chance_warning(_result([math.nan, math.nan])) is None  # nothing trained
    # counted by model, not by design: five placements of one chance model are one model
    assert chance_warning(_result([0.1] * 5 + [0.8, 0.7], archs=["a"] * 5 + ["b", "c"])) is None
    assert chance_warning(_result([0.1] * 5 + [0.8], archs=["a"] * 4 + ["d", "b"])) == (
        chance_warning(_result([0.1, 0.1, 0.8])))  # two chance models of three


def test_resume_compares_every_setting_but_where_training_runs() -> None:
    saved = SearchConfig(dataset="digits", population=4, budget={"epochs": 1})
    given = saved.with_changes(dataset="auto", epochs=2, population=6, workers=3,
                               executor="serial")
    assert config_differences(saved, given, ignore=frozenset({"workers", "executor"})) == [
        ("budget.epochs", 1, 2), ("population", 4, 6)]  # in SearchConfig's order


def test_progress_record_as_a_line_and_as_json() -> None:
    p = SearchProgress("generation", 2, 4, 36, 30, 20, 8, 24, 0.853, 0.0123, 0.5, 65.0, 130.0)
    assert p.line() == ("generation 2/4: 36 designs evaluated (30 feasible), 20 trained + 8 "
                        "cached, 24 to go; best accuracy 0.853, lowest latency 12.30 ms, "
                        "hypervolume 0.5000; "
                        "1m05s elapsed, about 2m10s left")
    q = SearchProgress("generation", 0, 4, 4, 0, 4, 0, 48, math.nan, math.nan, 0.0, 3.0,
                       math.nan)
    data = json.loads(json.dumps(q.to_dict()))
    assert list(data) == list(PROGRESS_FIELDS)
    assert data["best_accuracy"] is None and data["eta_s"] is None
    assert "best accuracy -" in q.line() and "left" not in q.line()


def test_results_without_a_checkpoint_are_never_reused(tmp_path: Path) -> None:
    """A folder whose checkpoint was deleted but whose results remain holds some search: a
    new run does not write over it."""
    (tmp_path / "front.csv").write_text("accuracy\n0.8\n")
    assert folder_state(tmp_path, "any") == "other"
    (tmp_path / "front.csv").unlink()
    assert folder_state(tmp_path, "any") == "free"


def test_a_folder_in_use_is_never_shared(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Catches two searches writing one folder at once: a folder locked by a running search is
    refused when named (--out, --overwrite, --resume) and skipped when it is the default; the
    lock goes with its process, even a killed one."""
    from search.runs import choose_run_folder, lock_run_folder

    base = tmp_path / "runs" / "search-x-seed0"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from search.runs import lock_run_folder; lock = lock_run_folder(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(60)", str(base)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(ValueError, match=rf"^{re.escape(str(base))} is in use by a running "
                                             rf"search or experiment \(process {holder.pid}\)"):
            lock_run_folder(base)
        with pytest.raises(ValueError, match="in use by a running search"):
            choose_run_folder(base, "any", named=True)
        for argv in (["--resume", str(base)],
                     [str(EXAMPLES / "three-tier.yaml"), "--out", str(base), "--overwrite"],
                     [str(EXAMPLES / "three-tier.yaml"), "--out", str(base)]):
            assert main(["search", *argv]) == 2, argv
            *notes, last = capsys.readouterr().err.strip().splitlines()
            assert last.startswith(f"jmsnas: error: {base} is in use by a running search"), last
            assert not any("error" in n for n in notes), notes
        folder, state, lock = choose_run_folder(base, "any", named=False)
        assert (folder.name, state) == ("search-x-seed0-2", "free")
        with pytest.raises(ValueError, match="in use"):  # one process, two runs: refused too
            lock_run_folder(folder)
        lock.close()
        again = lock_run_folder(folder)  # released by closing
        again.close()
    finally:
        holder.kill()
        holder.wait()
    lock_run_folder(base).close()  # released by the killed process


def test_resume_from_a_damaged_checkpoint_says_so_in_one_line(tmp_path: Path) -> None:
    s = load_scenario("experiments/scenarios/three-tier.yaml")
    search = _Search(s, SearchConfig(), tmp_path, map, None)
    (tmp_path / "checkpoint.pkl").write_bytes(pickle.dumps({"format": 6})[:5])  # truncated
    with pytest.raises(ValueError, match=r"checkpoint\.pkl is damaged"):
        search.load()
    (tmp_path / "checkpoint.pkl").write_bytes(pickle.dumps([1, 2, 3]))  # not a checkpoint
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        search.load()


@pytest.mark.slow
def test_a_terminated_search_stops_its_training_workers(tmp_path: Path) -> None:
    """``kill`` (SIGTERM) on a search with a pool of training workers: the command exits with
    143 within seconds and takes its worker processes with it (before, the workers were left
    running, adopted by init, training for nobody). The workers are the fork server's children
    (:mod:`models.processes`), so every process below the command is watched: the two workers,
    the fork server and multiprocessing's resource tracker."""
    import os
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "jmsnas", "search", "three-tier", "--workers", "2",
         "--population", "4", "--generations", "3", "--epochs", "2", "--subset", "3000",
         "--dataset", "mnist5k"], cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)

    def children(pid: int) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        return [int(k) for k in out.stdout.split()]

    def cmdline(pid: int) -> bytes:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
        return b""

    def descendants() -> list[int]:
        found, queue = [], [proc.pid]
        while queue:
            kids = children(queue.pop())
            found += kids
            queue += kids
        return found

    def workers() -> list[int]:  # the processes that train: the fork server's children (a
        # helper between its fork and its exec still has the command's own command line, and
        # once passed here for a worker: two seen, none 2 s later)
        servers = [k for k in children(proc.pid) if b"forkserver" in cmdline(k)]
        return [k for server in servers for k in children(server)]

    deadline = time.monotonic() + 120
    while len(workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # the workers are training
    assert len(workers()) >= 2, workers()
    kids = descendants()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 15
    while (alive := [k for k in kids if os.path.exists(f"/proc/{k}")]) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"processes left running: {alive}"


def test_the_local_pool_defaults_to_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """With the local executor on the CPU, ``--workers`` defaults to the cores (at most 4); a
    --config file's ``workers`` wins over that default."""
    from jmsnas.search import default_workers

    monkeypatch.chdir(tmp_path)
    cmd = [a if a != "serial" else "local" for a in _command(tmp_path)]
    assert main([*cmd, "--out", "a"]) == 0
    assert read_run_config(tmp_path / "a").config.workers == default_workers()
    (tmp_path / "fast.yaml").write_text(FAST + "workers: 1\n")
    assert main([*cmd, "--out", "b"]) == 0
    assert read_run_config(tmp_path / "b").config.workers == 1
