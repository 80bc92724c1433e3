"""The outputs the README shows are what today's code prints for the same command.

Each check finds a command in the README, the code block of output shown after it, runs the
command in a fresh folder and compares the two line by line (trailing spaces ignored). When one
fails, rerun the command and paste its output into the README: the shown output is stale.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow  # the quick start's search: about five minutes on two cores
def test_readme_quick_start_output_is_current(tmp_path: Path) -> None:
    from models.data import resolve_dataset

    text = README.read_text(encoding="utf-8")
    shown = _block_after(text, "printed its Pareto front:")
    if "fashion-mnist" in shown and resolve_dataset("auto", download=False)[0] != "fashion-mnist":
        pytest.skip("the README's output is on Fashion-MNIST, which this machine does not have")
    install = _block_after(text, "## Quick start").splitlines()[0]
    command = re.sub(r"\s+#.*$", "", install.split("&&", 1)[1]).strip()
    assert command.startswith("jmsnas search ")
    assert _lines(_run(command, tmp_path)) == _lines(shown)
