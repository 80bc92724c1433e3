"""A persistent accuracy cache in SQLite, safe for concurrent worker processes.

Keyed by (architecture blocks, compressing cuts, data set key, budget, seed): the architecture's
name is left out (the same blocks under two names train alike) and the data set is identified by
its ``Dataset.key`` (name and split), not its name alone. Each write is one transaction in
write-ahead-log mode, so readers never see a half-written row, several processes can write at
once (SQLite serialises them; a busy writer waits up to ``timeout_s``), and a process killed mid-run
leaves the database as it was after its last committed write.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

from .build import Cut
from .spec import ArchSpec
from .train import ProxyBudget, TrainResult

__all__ = ["AccuracyCache", "cache_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accuracy (
    key TEXT PRIMARY KEY,
    arch TEXT NOT NULL,
    cuts TEXT NOT NULL,
    dataset TEXT NOT NULL,
    budget TEXT NOT NULL,
    seed INTEGER NOT NULL,
    accuracy REAL,
    train_time_s REAL NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    created_unix_s REAL NOT NULL
)
"""


def _compressing(cuts: Sequence[Cut]) -> list[list[float]]:
    # Only cuts that compress change the trained model; plain split positions do not.
    return [[c.position, c.bottleneck, c.bits] for c in sorted(cuts, key=lambda c: c.position)
            if c.compresses]


def cache_key(spec: ArchSpec, dataset: str, budget: ProxyBudget, seed: int,
              cuts: Sequence[Cut] = ()) -> str:
    """SHA-256 of the canonical JSON of everything the accuracy depends on.

    ``dataset`` should be a :attr:`models.data.Dataset.key`, which includes the split.
    """
    text = json.dumps([spec.to_dict()["blocks"], _compressing(cuts), dataset, budget.to_dict(),
                       seed],
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class AccuracyCache:
    """``get``/``put`` accuracies; ``get_or_compute`` trains only on a miss."""

    def __init__(self, path: str | os.PathLike[str], timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def get(self, key: str) -> TrainResult | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT accuracy, train_time_s, status, message FROM accuracy "
                             "WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        acc = float("nan") if row[0] is None else float(row[0])
        return TrainResult(acc, float(row[1]), row[2], row[3])

    def put(self, key: str, result: TrainResult, *, spec: ArchSpec, dataset: str,
            budget: ProxyBudget, seed: int, cuts: Sequence[Cut] = ()) -> None:
        acc = None if result.accuracy != result.accuracy else result.accuracy  # NaN -> NULL
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO accuracy VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, spec.to_json(), json.dumps(_compressing(cuts)), dataset,
                 json.dumps(budget.to_dict(), sort_keys=True), seed, acc, result.train_time_s,
                 result.status, result.message, time.time()),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def __len__(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM accuracy").fetchone()[0])

    def get_or_compute(self, spec: ArchSpec, dataset: str, budget: ProxyBudget, seed: int,
                       compute: Callable[[], TrainResult],
                       cuts: Sequence[Cut] = ()) -> tuple[TrainResult, bool]:
        """(result, was_cached). ``compute`` runs only on a miss; its result is stored."""
        key = cache_key(spec, dataset, budget, seed, cuts)
        hit = self.get(key)
        if hit is not None:
            return hit, True
        result = compute()
        self.put(key, result, spec=spec, dataset=dataset, budget=budget, seed=seed, cuts=cuts)
        return result, False
