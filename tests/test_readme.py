"""The outputs the README shows are what today's code prints for the same command.

The simulate example and (slow: minutes) the quick start's search are run in a fresh folder and
compared line by line (trailing spaces ignored); the quick start's printed front is also checked
for today's layout, quickly. When one fails, rerun the command and paste its output into the
README: the shown output is stale. The search's digits do not depend on the machine's number
of cores (proxy training uses one torch thread whatever the cores,
:func:`models.train.one_thread`; with two threads the same cache key once trained to different
accuracies in CI than on the command line), but they do on its kind of CPU: the same code
trained one architecture to 0.819 on one machine and 0.8218 on another (README, quick start).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .tables import WRITE_TABLES, check_table, shipped_cache

README = Path(__file__).resolve().parent.parent / "README.md"


def _block_after(text: str, marker: str) -> str:
    """The body of the first fenced code block after ``marker``."""
    found = re.compile(r"```[a-z]*\n(.*?)```", re.S).search(text, text.index(marker))
    assert found, f"no code block after {marker!r} in the README"
    return found.group(1)


def _run(command: str, cwd: Path) -> str:
    """Run a ``jmsnas ...`` command line as a user would (``python -m jmsnas``) and return what
    it printed on stdout (the README shows that; notes and progress go to stderr)."""
    argv = shlex.split(command)
    assert argv[0] == "jmsnas", command
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run([sys.executable, "-m", "jmsnas", *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def test_readme_simulate_output_is_current(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    marker = "To simulate one fixed split instead: `"
    command = text[text.index(marker) + len(marker):].split("`", 1)[0]
    assert command.startswith("jmsnas simulate ")
    assert _lines(_run(command, tmp_path)) == _lines(_block_after(text, marker))


def _quick_start_command(text: str) -> str:
    install = _block_after(text, "## Quick start").splitlines()[0]
    return re.sub(r"\s+#.*$", "", install.split("&&", 1)[1]).strip()


@pytest.mark.slow
def test_readme_quick_start_output_is_current(tmp_path: Path) -> None:
    """The README's first command, run as a user would in a fresh folder, prints exactly the
    front the README shows. Its proxy trainings (the 60 designs', the noise measurement's and
    the front's test-set trainings: about 9 minutes on two cores) are read from the shipped
    table ``tests/data/quick-start-camera-lte.csv`` (:mod:`tests.tables`), put where the run's
    own accuracy cache lies, as a rerun would find it; the search, the simulations, the
    re-measurement and the printing all run. The test fails if the run trained anything the
    table lacks; ``test_the_shipped_accuracy_tables_reproduce`` trains rows of it again. With
    ``JMSNAS_WRITE_TABLES=1`` the run trains everything, as a newcomer's does, and writes the
    table."""
    from models.fashion_mnist import find_fashion_mnist

    if find_fashion_mnist() is None:  # the search would try to download it (a subprocess is
        if WRITE_TABLES:  # not kept offline) or fall back
            pytest.fail("JMSNAS_WRITE_TABLES=1: the quick start's table is on Fashion-MNIST, "
                        "which is not on disk here")
        pytest.skip("Fashion-MNIST is not on disk")
    text = README.read_text(encoding="utf-8")
    command = _quick_start_command(text)
    assert command.startswith("jmsnas search ")
    shown = _block_after(text, "printed its Pareto front:")
    cache = tmp_path / "runs" / f"search-{command.split()[2]}-seed0" / "accuracy.sqlite"
    imported = shipped_cache(cache, "quick-start-camera-lte")
    printed = _run(command, tmp_path)
    check_table(cache, "quick-start-camera-lte", imported)
    assert _lines(printed) == _lines(shown)


def test_readme_quick_start_front_has_the_printed_layout() -> None:
    """The quick start's front as `jmsnas search` prints it today: its summary line, the notes,
    the column heads of :data:`jmsnas.search.FRONT_HEAD`, and per row the accuracy with its
    noise, the architecture's name and a design on the scenario's nodes (a quick check; the
    slow test above compares digit for digit)."""
    from jmsnas.search import FRONT_HEAD

    text = README.read_text(encoding="utf-8")
    scenario = _quick_start_command(text).split()[2]
    lines = _lines(_block_after(text, "printed its Pareto front:"))
    assert re.fullmatch(rf"\d+ designs evaluated \(\d+ unstable\), (\d+) on the front, "
                        rf"hypervolume 0\.\d{{4}}; results in runs/search-{scenario}-seed0/",
                        lines[0]), lines[0]
    assert lines[1].startswith("  proxy accuracy on ") and "seed-to-seed" in lines[1]
    assert lines[2].startswith("  latencies re-measured on ")
    assert re.split(r"\s{2,}", lines[3].strip()) == list(FRONT_HEAD)
    rows = lines[4:]
    assert len(rows) == int(lines[0].split(" on the front")[0].rsplit(" ", 1)[1])
    row = re.compile(r"  0\.\d{3} \+/- 0\.\d{3}  0\.\d{3} +[\d.]+ \+/- [\d.]+ +[\d.]+ \+/- [\d.]+"
                     r" +[\d.]+  tiny-[0-9a-f]+ +camera\[0:\d+\] -> edge\[\d+:\d+\] -> "
                     r"cloud\[\d+:\d+\]( \(.+\))?")
    for r in rows:
        assert row.fullmatch(r), r
