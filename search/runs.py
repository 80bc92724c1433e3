"""Run folders of a search: their default name, what they hold, and how a rerun treats them.

The rule (what ``jmsnas search`` does, our choice):

- a run's default folder is ``runs/search-STEM-seedS``, STEM the scenario file's name without
  ``.yaml`` (``camera-lte`` for the shipped scenario of that name, ``edited`` for
  ``my/edited.yaml``, whatever its ``name:`` field says) and S the GA seed;
- a folder without a checkpoint or results (``front.csv``) is free: the run goes there (an
  accuracy cache left in it is used: it is keyed by architecture, budget and data, so it is
  never stale);
- a folder whose checkpoint is this very search (same scenario and configuration,
  :func:`search.nsga.fingerprint`) that did not finish (no ``front.csv``) is continued;
- a folder holding a finished search, or another one: the default folder gives way to the first
  of ``runs/search-STEM-seedS-2``, ``-3``, ... that is free or holds this search unfinished, so
  that a command can be run twice in a row; a folder named with ``--out`` is refused instead
  (it is never silently written elsewhere), unless ``--overwrite`` asks to replace its run
  (:func:`clear_run`: the run's files go, the accuracy cache stays);
- ``--resume DIR`` continues the run in DIR with the scenario and configuration its
  ``config.yaml`` records (:func:`read_run_config`), written when the run starts;
- a folder in use by a running search (its ``.lock`` file locked, :func:`lock_run_folder`) is
  never written by another: the default folder gives way to the next free numbered one, a
  folder named with ``--out``, ``--overwrite`` or ``--resume`` is refused. The lock is the
  operating system's (``flock``): it goes with the process that held it, even a killed one.
"""

from __future__ import annotations

import fcntl
import os
import pickle
from dataclasses import dataclass
from importlib import metadata
from itertools import chain, count
from pathlib import Path
from typing import IO, Any, Literal

import yaml

from .config import SearchConfig, validate_config

__all__ = ["CONFIG_FILE", "LOCK_FILE", "RUN_FILES", "FolderState", "SavedRun",
           "choose_run_folder", "clear_run", "config_differences", "default_run_folder",
           "folder_state", "lock_run_folder", "read_run_config", "write_run_config"]

CONFIG_FILE = "config.yaml"
RUN_FILES = ("checkpoint.pkl", CONFIG_FILE, "front.csv", "evaluations.csv", "history.csv",
             "front.png", "hypervolume.png")
"""What a run writes into its folder besides the accuracy cache (``accuracy.sqlite`` and
``accuracy.weights/``)."""

LOCK_FILE = ".lock"
"""Held (``flock``) by the process running a search in the folder; it holds that process's id."""

FolderState = Literal["free", "unfinished", "finished", "other"]
"""What a folder holds for a given search: no checkpoint; this search, not finished; this search,
finished; another search (or a checkpoint that cannot be read)."""


def default_run_folder(scenario_file: str | os.PathLike[str], seed: int,
                       root: str | os.PathLike[str] = "runs") -> Path:
    """``root/search-STEM-seedSEED``, STEM the scenario file's name without its suffix."""
    return Path(root) / f"search-{Path(scenario_file).stem}-seed{seed}"


def folder_state(folder: Path, fingerprint: str) -> FolderState:
    """What ``folder`` holds for the search whose fingerprint is ``fingerprint``."""
    path = folder / "checkpoint.pkl"
    if not path.exists():  # results without a checkpoint: some search's, never overwritten
        return "other" if (folder / "front.csv").exists() else "free"
    try:
        with open(path, "rb") as fh:
            state = pickle.load(fh)
    except Exception:  # any unreadable checkpoint is simply not this search's
        return "other"
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return "other"
    return "finished" if (folder / "front.csv").exists() else "unfinished"


def lock_run_folder(folder: Path) -> IO[str]:
    """Lock ``folder`` for this process's run (creating it): the open lock file, to be kept
    open while the run lasts (closing it, or the process ending, releases the lock). A
    ValueError naming the folder and the process that holds it when another one does."""
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # held open by the caller
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise ValueError(f"{folder} is in use by a running search or experiment (process "
                         f"{holder}): wait for it to end, or choose another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def choose_run_folder(base: Path, fingerprint: str, *, named: bool
                      ) -> tuple[Path, FolderState, IO[str]]:
    """The folder a new run of the search ``fingerprint`` goes to, its state (``free`` or
    ``unfinished``: continue it) and its lock (:func:`lock_run_folder`), by the rule of the
    module docstring. ``named``: ``base`` was given by the user, so it is not replaced by a
    numbered one: a ValueError instead."""
    state = folder_state(base, fingerprint)
    if named:
        if state not in ("free", "unfinished"):
            what = "a finished run of this search" if state == "finished" else "another search"
            raise ValueError(f"{base} already holds a search ({what}): pass --resume {base} to "
                             "continue it, --overwrite to replace it, or choose another --out")
        lock = lock_run_folder(base)
        if folder_state(base, fingerprint) != state:  # it changed before the lock was ours
            lock.close()
            return choose_run_folder(base, fingerprint, named=named)
        return base, state, lock
    for folder in chain([base], (base.with_name(f"{base.name}-{n}") for n in count(2))):
        state = folder_state(folder, fingerprint)
        if state in ("free", "unfinished"):
            try:
                lock = lock_run_folder(folder)
            except ValueError:  # a run of its own is going on there: the next one
                continue
            state = folder_state(folder, fingerprint)  # again, now that no run can change it
            if state in ("free", "unfinished"):
                return folder, state, lock
            lock.close()
    raise AssertionError("unreachable")  # pragma: no cover


def clear_run(folder: Path) -> None:
    """Remove a run's files from ``folder`` (:data:`RUN_FILES`), keeping its accuracy cache."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for tmp in folder.glob("checkpoint.pkl.*.tmp"):  # a killed save's leftovers
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class SavedRun:
    """What a run folder's ``config.yaml`` records."""

    scenario: Path | None
    """The scenario file (None in folders written before it was recorded at the start)."""
    config: SearchConfig
    data_dir: str | None = None
    """``--data-dir`` of the run, if it was given."""


def _version() -> str:
    try:
        return metadata.version("jmsnas")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def write_run_config(folder: Path, config: SearchConfig, scenario_file: str | os.PathLike[str],
                     data_dir: str | None = None) -> Path:
    """Write ``folder/config.yaml``: the package version, the scenario file (absolute, so
    that ``--resume`` works from anywhere), the resolved search configuration and, if given,
    the data folder."""
    record: dict[str, Any] = {"jmsnas_version": _version(),
                              "scenario": str(Path(scenario_file).resolve()),
                              "search": config.model_dump()}
    if data_dir is not None:
        record["data_dir"] = str(Path(data_dir).resolve())
    path = folder / CONFIG_FILE
    path.write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    return path


def read_run_config(folder: Path) -> SavedRun:
    """What ``folder/config.yaml`` records (also the older layout: the search configuration
    alone, at the top level); a ValueError naming the file when it is missing or invalid."""
    path = folder / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot resume from {folder}: no readable {CONFIG_FILE} "
                         f"({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    if isinstance(data.get("search"), dict):
        scenario, data_dir = data.get("scenario"), data.get("data_dir")
        config = validate_config(data["search"], f"{path}: search")
        return SavedRun(Path(scenario) if isinstance(scenario, str) else None, config,
                        data_dir if isinstance(data_dir, str) else None)
    return SavedRun(None, validate_config(data, str(path)))


def config_differences(saved: SearchConfig, given: SearchConfig,
                       ignore: frozenset[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """The settings where ``given`` differs from ``saved``: (dotted name such as
    ``budget.epochs``, saved value, given value), in field order; top-level fields in
    ``ignore`` are skipped, and ``dataset: auto`` agrees with whatever data set was saved."""
    a, b = saved.model_dump(), given.model_dump()
    if b["dataset"] == "auto":
        b["dataset"] = a["dataset"]
    out = []
    for key, value in a.items():
        if key in ignore:
            continue
        if isinstance(value, dict):
            out += [(f"{key}.{k}", v, b[key][k]) for k, v in value.items() if v != b[key][k]]
        elif value != b[key]:
            out.append((key, value, b[key]))
    return out
