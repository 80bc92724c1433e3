"""Shipped accuracy tables: real proxy trainings that a long test wrote once, read back so that
the test runs in seconds (the searches, simulations and comparisons all still run).

A table is ``tests/data/NAME.csv``, written by :meth:`models.cache.AccuracyCache.export_csv`
from the cache of the very test that reads it. Rows are keyed by architecture, cuts, data set
(split included), budget, seed, device and code version, so a changed training misses instead
of hitting; :func:`check_table` then fails the test (the table is stale), and
:func:`retrain_rows` trains a sample of rows again (``tests/test_search.py``,
``test_the_shipped_accuracy_tables_reproduce``). With ``JMSNAS_WRITE_TABLES=1`` the tests train
afresh and write their tables instead.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
from pathlib import Path

import torch

from models.cache import AccuracyCache, cache_key
from models.spec import ArchSpec, Cut
from models.train import ProxyBudget
from search.evaluate import TrainJob, run_train_job

TABLES = Path(__file__).resolve().parent / "data"
WRITE_TABLES = os.environ.get("JMSNAS_WRITE_TABLES") == "1"
"""Set to train afresh and write the shipped tables (after a change of CODE_VERSION, of the
budget or of the runs), on one machine: ``JMSNAS_WRITE_TABLES=1 python -m pytest
tests/test_search.py tests/test_readme.py tests/test_experiments.py -k "true_front or
compression_space or quick_start_output or documented_columns"``, about 45 minutes on two
cores (README, Tests); then, on each other kind of machine CI runs on, ``JMSNAS_WRITE_TABLES=1
python -m pytest -n 0 tests/test_search.py -k tables_reproduce`` records that kind's
retrainings (:func:`recorded`)."""


def shipped_cache(cache: str | Path, table: str) -> int:
    """Fill the accuracy cache ``cache`` with ``tests/data/TABLE.csv`` (nothing with
    ``JMSNAS_WRITE_TABLES=1``); returns how many rows it then holds."""
    if not WRITE_TABLES:
        AccuracyCache(cache).import_csv(TABLES / f"{table}.csv")
    return len(AccuracyCache(cache))


def machine() -> str:
    """What a training's last digits depend on besides the code: the CPU's vendor and model,
    the kernels torch picks for it, and torch's version. Two machines alike in all four train
    alike to the digit; otherwise floating-point sums run in another order, and accuracies
    differ by a few scored images (README, quick start)."""
    vendor, model = platform.machine(), platform.processor() or "unknown"
    try:
        info: dict[str, str] = {}
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                info.setdefault(name.strip(), value.strip())  # the first CPU's
        vendor = info.get("vendor_id", vendor)
        model = (f"{info.get('model name', model)} (family {info.get('cpu family', '?')}, "
                 f"model {info.get('model', '?')}, stepping {info.get('stepping', '?')})")
    except OSError:
        pass
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"{vendor} | {model} | {kernels} | torch {torch.__version__}"


def table_machine(table: str) -> str:
    """The :func:`machine` that wrote ``tests/data/TABLE.csv`` (``TABLE.machine.txt``)."""
    return (TABLES / f"{table}.machine.txt").read_text(encoding="utf-8").strip()


def recorded(table: str) -> dict[str, float]:
    """Accuracies that rows of ``tests/data/TABLE.csv`` trained to on this kind of machine
    (:func:`machine`), by row key, from ``TABLE.retrained.csv``: written by
    ``test_the_shipped_accuracy_tables_reproduce`` with ``JMSNAS_WRITE_TABLES=1`` on a machine
    of another kind than the one that wrote the table, so that that kind too is held to the
    digit."""
    path = TABLES / f"{table}.retrained.csv"
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        here = machine()
        return {r["key"]: float(r["accuracy"]) for r in csv.DictReader(fh)
                if r["machine"] == here}


def record(table: str, accuracies: dict[str, float]) -> None:
    """Keep ``accuracies`` (row key: accuracy trained here) as this machine kind's in
    ``TABLE.retrained.csv``, in place of what it held for this kind."""
    path = TABLES / f"{table}.retrained.csv"
    here = machine()
    kept: list[dict[str, str]] = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            kept = [r for r in csv.DictReader(fh) if r["machine"] != here]
    kept += [{"machine": here, "key": k, "accuracy": repr(a)} for k, a in accuracies.items()]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["machine", "key", "accuracy"])
        writer.writeheader()
        writer.writerows(kept)
    tmp.replace(path)


def check_table(cache: str | Path, table: str, imported: int) -> None:
    """Write the table and the machine that wrote it (with ``JMSNAS_WRITE_TABLES=1``), or
    fail if the runs trained anything it lacked: the table is stale, and the test was slow."""
    if WRITE_TABLES:
        AccuracyCache(cache).export_csv(TABLES / f"{table}.csv")
        (TABLES / f"{table}.machine.txt").write_text(machine() + "\n", encoding="utf-8")
        return
    missed = len(AccuracyCache(cache)) - imported
    assert missed == 0, (f"{missed} trainings were not in tests/data/{table}.csv (the code "
                         f"version or the runs changed): write it again as "
                         f"tests/tables.py's WRITE_TABLES says")


def _data_of(key: str) -> tuple[str, int, bool]:
    """(name, seed, final) of a :attr:`models.data.Dataset.key` such as
    ``mnist5k[seed=0,val_fraction=0.2,train=4000,val=1000]`` (``,final`` after the split for
    the held-out test set's trainings)."""
    found = re.fullmatch(r"([\w-]+)\[(.*)\]", key)
    assert found, f"data set key {key!r}"
    fields = found.group(2).split(",")
    seed = next(int(f.split("=", 1)[1]) for f in fields if f.startswith("seed="))
    return found.group(1), seed, "final" in fields


def table_rows(table: str) -> list[dict[str, str]]:
    with open(TABLES / f"{table}.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def retrain_rows(table: str, fresh: Path, kinds: set[str]
                 ) -> list[tuple[str, dict[str, str], float, int]]:
    """Check every row's key against today's code, then train again, as a search's worker
    trains it (a variant's parent first, then its fine-tuning through the codec), the first
    row of each of ``kinds`` in the table: ``plain``, ``fine-tuned``, ``compressed``, or one of
    these prefixed ``final `` (trained on training plus validation parts, scored on the test
    set). Returns every row of the table that those trainings gave again (the parents too),
    as ``(kind, row, accuracy trained here, images it is scored on)``; the caller compares.
    ``fresh``: an empty cache for the trainings."""
    from models.data import load_dataset

    chosen: dict[str, TrainJob] = {}
    scored: dict[str, int] = {}  # images each data set key scores on
    rows: dict[str, tuple[str, dict[str, str]]] = {}
    for row in table_rows(table):
        name, seed, final = _data_of(row["dataset"])
        if row["dataset"] not in scored:
            data = load_dataset(name, seed=seed)
            data = data.final() if final else data
            assert data.key == row["dataset"], (data.key, row["dataset"])
            scored[data.key] = int(data.y_val.shape[0])
        spec = ArchSpec.from_json(row["arch"])
        budget = json.loads(row["budget"])
        cuts = tuple((int(p), float(b), int(bits)) for p, b, bits in json.loads(row["cuts"]))
        keys = {cache_key(spec, row["dataset"], ProxyBudget(**budget), int(row["seed"]),
                          [Cut(*c) for c in cuts], "cpu", finetuned=f): f for f in (False, True)}
        assert row["key"] in keys, f"a row whose key today's code does not compute: {row}"
        finetune = keys[row["key"]]
        kind = "compressed" if cuts else "fine-tuned" if finetune else "plain"
        kind = f"final {kind}" if final else kind
        rows[row["key"]] = (kind, row)
        if kind in kinds:
            chosen.setdefault(kind, TrainJob(
                arch_json=row["arch"], cuts=cuts, dataset=name, dataset_seed=seed,
                budget=tuple(sorted(budget.items())), seed=int(row["seed"]), device="cpu",
                cache_path=str(fresh), keep_weights=bool(cuts) or finetune, finetune=finetune,
                final=final))
    assert set(chosen) == kinds, f"{table} holds no row of kind {sorted(kinds - set(chosen))}"
    for job in chosen.values():
        run_train_job(job)
    out = []
    cache = AccuracyCache(fresh)
    for key, (kind, row) in rows.items():
        again = cache.get(key)
        if again is not None:
            assert again.status == row["status"], (kind, row, again)
            out.append((kind, row, again.accuracy, scored[row["dataset"]]))
    return out
