"""The SQLite accuracy cache: hits cost nothing, concurrent writers, killed writers."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from models.cache import AccuracyCache, cache_key
from models.spec import ArchSpec, Conv, Cut, Head
from models.train import ProxyBudget, TrainResult

SPEC = ArchSpec("a", (Conv(8), Head()))
BUDGET = ProxyBudget(epochs=1)


def test_a_second_request_does_not_train(tmp_path: Path) -> None:
    cache = AccuracyCache(tmp_path / "acc.sqlite")
    calls = []

    def train() -> TrainResult:
        calls.append(1)
        return TrainResult(0.9, 1.5, "ok")

    first, hit1 = cache.get_or_compute(SPEC, "digits", BUDGET, 0, train)
    second, hit2 = cache.get_or_compute(SPEC, "digits", BUDGET, 0, train)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert first == second == TrainResult(0.9, 1.5, "ok")
    # Reopened from disk, still there.
    assert AccuracyCache(tmp_path / "acc.sqlite").get(cache_key(SPEC, "digits", BUDGET, 0)) == first


def test_key_covers_what_accuracy_depends_on() -> None:
    k = cache_key(SPEC, "digits", BUDGET, 0)
    assert k != cache_key(SPEC, "mnist5k", BUDGET, 0)
    assert k != cache_key(SPEC, "digits", ProxyBudget(epochs=2), 0)
    assert k != cache_key(SPEC, "digits", BUDGET, 1)
    assert k != cache_key(ArchSpec("a", (Conv(16), Head())), "digits", BUDGET, 0)
    assert k != cache_key(SPEC, "digits", BUDGET, 0, [Cut(1, 0.5, 8)])
    assert k == cache_key(SPEC, "digits", BUDGET, 0, [Cut(1)])  # a plain split trains nothing new


def test_failed_evaluations_are_stored_with_nan(tmp_path: Path) -> None:
    cache = AccuracyCache(tmp_path / "acc.sqlite")
    key = cache_key(SPEC, "digits", BUDGET, 0)
    cache.put(key, TrainResult(math.nan, 0.1, "diverged", "loss nan"), spec=SPEC,
              dataset="digits", budget=BUDGET, seed=0)
    got = cache.get(key)
    assert got is not None and got.status == "diverged" and math.isnan(got.accuracy)


def _writer(path: str, worker: int, n: int) -> None:
    cache = AccuracyCache(path)
    for i in range(n):
        seed = worker * 1000 + i
        cache.put(cache_key(SPEC, "digits", BUDGET, seed), TrainResult(i / n, 0.01, "ok"),
                  spec=SPEC, dataset="digits", budget=BUDGET, seed=seed)


def test_concurrent_writer_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "acc.sqlite")
    AccuracyCache(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = AccuracyCache(path)
    assert len(cache) == 160
    for w in range(4):
        got = cache.get(cache_key(SPEC, "digits", BUDGET, w * 1000 + 39))
        assert got is not None and got.accuracy == pytest.approx(39 / 40)


def test_killed_writer_leaves_a_consistent_database(tmp_path: Path) -> None:
    path = str(tmp_path / "acc.sqlite")
    AccuracyCache(path)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_writer, args=(path, 7, 100_000))
    proc.start()
    deadline = time.time() + 60
    while len(AccuracyCache(path)) < 50 and time.time() < deadline:
        time.sleep(0.05)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT accuracy, status FROM accuracy").fetchall()
    assert len(rows) >= 50
    assert all(status == "ok" and acc is not None for acc, status in rows)
    cache = AccuracyCache(path)  # still usable
    cache.put("k", TrainResult(0.5, 0.1, "ok"), spec=SPEC, dataset="d", budget=BUDGET, seed=0)
    assert cache.get("k") == TrainResult(0.5, 0.1, "ok")


def test_key_ignores_the_name_and_sees_the_split() -> None:
    from models.data import load_dataset

    renamed = ArchSpec("another name", SPEC.blocks)
    assert cache_key(renamed, "digits", BUDGET, 0) == cache_key(SPEC, "digits", BUDGET, 0)
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    c = load_dataset("digits", seed=0, val_fraction=0.3)
    assert len({a.key, b.key, c.key}) == 3
    assert a.key == load_dataset("digits", seed=0).key
    assert cache_key(SPEC, a.key, BUDGET, 0) != cache_key(SPEC, b.key, BUDGET, 0)


def test_weights_round_trip_and_a_damaged_file_is_a_miss(tmp_path: Path) -> None:
    """Catches weights written in place (a killed writer would leave half a file that later
    loads) and a damaged file that raises instead of being retrained."""
    import torch

    cache = AccuracyCache(tmp_path / "acc.sqlite")
    key = cache_key(SPEC, "digits", BUDGET, 0)
    assert cache.load_weights(key) is None
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    cache.save_weights(key, state)
    assert cache.weights_path(key).parent == tmp_path / "acc.weights"
    loaded = cache.load_weights(key)
    assert loaded is not None and torch.equal(loaded["w"], state["w"])
    assert not list(cache.weights_path(key).parent.glob(".tmp-*"))
    cache.weights_path(key).write_bytes(b"not a torch file")
    assert cache.load_weights(key) is None


def test_variant_keys_name_how_variants_are_trained() -> None:
    """Catches a variant served from an entry trained another way (from scratch, before
    inheritance) and an uncompressed architecture whose key moves with fine-tuning settings
    that cannot change its run."""
    import hashlib
    import json

    from models.cache import VARIANT_TRAINING

    cuts = [Cut(1, 0.5, 8)]
    plain = {k: v for k, v in BUDGET.to_dict().items() if not k.startswith("finetune_")}
    old = json.dumps([SPEC.to_dict()["blocks"], [[1, 0.5, 8]], "d", BUDGET.to_dict(), 0],
                     sort_keys=True, separators=(",", ":"))
    assert cache_key(SPEC, "d", BUDGET, 0, cuts) != hashlib.sha256(old.encode()).hexdigest()
    assert VARIANT_TRAINING
    before = json.dumps([SPEC.to_dict()["blocks"], [], "d", plain, 0], sort_keys=True,
                        separators=(",", ":"))  # a key of code version 1: not served any more
    assert cache_key(SPEC, "d", BUDGET, 0) != hashlib.sha256(before.encode()).hexdigest()
    other = ProxyBudget(epochs=1, finetune_fraction=0.5)
    assert cache_key(SPEC, "d", other, 0) == cache_key(SPEC, "d", BUDGET, 0)
    assert cache_key(SPEC, "d", other, 0, cuts) != cache_key(SPEC, "d", BUDGET, 0, cuts)


def test_key_names_the_code_version_and_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a shared cache that serves an accuracy from older training code (a version left
    out of the key, or not followed by it) or from another device (CPU and GPU runs differ)."""
    import models.cache as mc

    k = cache_key(SPEC, "d", BUDGET, 0, [Cut(1, 0.5, 8)])
    plain = cache_key(SPEC, "d", BUDGET, 0)
    assert cache_key(SPEC, "d", BUDGET, 0, device="cuda:NVIDIA H100") != plain
    assert cache_key(SPEC, "d", BUDGET, 0, device="cpu") == plain  # the default is the CPU
    monkeypatch.setattr(mc, "CODE_VERSION", mc.CODE_VERSION + 1)
    assert cache_key(SPEC, "d", BUDGET, 0) != plain
    assert cache_key(SPEC, "d", BUDGET, 0, [Cut(1, 0.5, 8)]) != k


def test_only_deterministic_failures_are_cached(tmp_path: Path) -> None:
    """Catches a transient error (out of memory, say) stored for ever as a failure, and
    deterministic failures (a NaN loss, an architecture too deep for the input) not stored,
    which would retrain them on every run."""
    cache = AccuracyCache(tmp_path / "acc.sqlite")
    for i, (status, kept) in enumerate([("error", False), ("diverged", True), ("failed", True),
                                        ("ok", True)]):
        key = cache_key(SPEC, "digits", BUDGET, i)
        acc = 0.5 if status == "ok" else math.nan
        assert cache.put(key, TrainResult(acc, 0.1, status, "why"),  # type: ignore[arg-type]
                         spec=SPEC, dataset="digits", budget=BUDGET, seed=i) is kept
        assert (cache.get(key) is not None) is kept, status
    assert len(cache) == 3


def test_out_of_memory_in_training_is_retried_not_cached(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a transient failure of a real training run (out of memory at an optimiser step)
    reported as a deterministic ``failed``, which the cache would keep for ever."""
    import torch

    from models.data import load_dataset
    from models.train import proxy_accuracy

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    data = load_dataset("digits", seed=0)
    cache = AccuracyCache(tmp_path / "acc.sqlite")
    with monkeypatch.context() as m:
        m.setattr(torch.optim.Adam, "step", oom)
        r, cached = cache.get_or_compute(SPEC, data.key, BUDGET, 0,
                                         lambda: proxy_accuracy(SPEC, data, BUDGET))
    assert r.status == "error" and "out of memory" in r.message and not cached
    assert len(cache) == 0
    r, cached = cache.get_or_compute(SPEC, data.key, BUDGET, 0,
                                     lambda: proxy_accuracy(SPEC, data, BUDGET))
    assert r.ok and not cached and len(cache) == 1  # the rerun trained, and kept the result


def test_noise_keeps_the_measurement_with_more_degrees_of_freedom(tmp_path: Path) -> None:
    """Catches a small measurement (a search's 6 architectures) overwriting a larger one (the
    proxy experiment's 30) and a noise entry shared across budgets, data sets or populations."""
    cache = AccuracyCache(tmp_path / "acc.sqlite")
    tiny = "space:tiny"
    assert cache.noise("d", BUDGET, tiny) is None
    cache.put_noise("d", BUDGET, tiny, 0.010, 30, 2, "proxy experiment")
    cache.put_noise("d", BUDGET, tiny, 0.020, 6, 2, "search")
    assert cache.noise("d", BUDGET, tiny) == (0.010, 30, 2, "proxy experiment")
    cache.put_noise("d", BUDGET, tiny, 0.012, 30, 3, "bigger")
    assert cache.noise("d", BUDGET, tiny) == (0.012, 30, 3, "bigger")
    assert cache.noise("d", ProxyBudget(epochs=2), tiny) is None
    assert cache.noise("other", BUDGET, tiny) is None
    assert cache.noise("d", BUDGET, "space:mobile") is None  # another population


def test_export_and_import_round_trip_exactly_and_refuse_bad_rows(tmp_path: Path) -> None:
    """A cache exported to CSV and imported into a fresh one answers every key with the same
    result, bit for bit (accuracies such as 1/3 and 5e-324 included); an import counts only
    the rows it added; a malformed row (a NaN accuracy with status ok, an accuracy above 1, a
    duplicate key, a short row, a key that is not a hash, an architecture that is not JSON)
    is refused naming the line, and adds nothing."""
    source = AccuracyCache(tmp_path / "a.sqlite")
    results = [TrainResult(1 / 3, 0.5, "ok"), TrainResult(5e-324, 1.25, "ok", 'a "quoted"\nnote'),
               TrainResult(math.nan, 0.1, "diverged", "loss nan")]
    keys = [cache_key(SPEC, "digits", BUDGET, seed) for seed in range(3)]
    for seed, (key, result) in enumerate(zip(keys, results, strict=True)):
        source.put(key, result, spec=SPEC, dataset="digits", budget=BUDGET, seed=seed,
                   cuts=[Cut(1, 0.5, 8)] if seed == 1 else ())
    table = tmp_path / "table.csv"
    assert source.export_csv(table) == 3
    copy = AccuracyCache(tmp_path / "b.sqlite")
    assert copy.import_csv(table) == 3
    assert copy.import_csv(table) == 0  # already there: nothing added
    for key, result in zip(keys, results, strict=True):
        got = copy.get(key)
        assert got is not None and got.status == result.status and got.message == result.message
        assert got.accuracy == result.accuracy or (math.isnan(got.accuracy)
                                                   and math.isnan(result.accuracy))
    import csv
    import io

    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    head, good = rows[0], next(r for r in rows[1:] if r[6] == repr(1 / 3))

    def changed(**columns: str) -> list[str]:
        return [columns.get(name, value) for name, value in zip(head, good, strict=True)]

    bad = {
        "nan accuracy with status ok": [changed(accuracy="nan")],
        "accuracy above one": [changed(accuracy="7.5")],
        "duplicate key": [good, good],
        "short row": [good[:5]],
        "not a hash": [changed(key="xyz")],
        "architecture not JSON": [changed(arch="{not json")],
    }
    for what, body in bad.items():
        text = io.StringIO()
        csv.writer(text).writerows([head, *body])
        path = tmp_path / f"{what}.csv"
        path.write_text(text.getvalue(), encoding="utf-8")
        fresh = AccuracyCache(tmp_path / f"{what}.sqlite")
        with pytest.raises(ValueError, match=rf"{path.name}, line \d"):
            fresh.import_csv(path)
        assert len(fresh) == 0, what
