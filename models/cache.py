"""A persistent accuracy cache in SQLite, safe for concurrent worker processes.

Keyed by (architecture blocks, compressing cuts, data set key, budget, seed, device, code
version): the architecture's name is left out (the same blocks under two names train alike), the
data set is identified by its ``Dataset.key`` (name and split), not its name alone, and
:data:`CODE_VERSION` changes whenever building, training or quantisation does, so a shared cache
never serves an accuracy that today's code would not give. Only deterministic results are kept
(:attr:`TrainResult.deterministic`): a transient error, out of memory say, is retried next time.

Each write is one transaction in write-ahead-log mode, so readers never see a half-written row,
several processes can write at once (SQLite serialises them; a busy writer waits up to
``timeout_s``), and a process killed mid-run leaves the database as it was after its last
committed write.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

import torch

from .spec import ArchSpec, Cut
from .train import ProxyBudget, TrainResult

__all__ = ["CODE_VERSION", "AccuracyCache", "cache_key"]

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
);
CREATE TABLE IF NOT EXISTS proxy_noise (
    dataset TEXT NOT NULL,
    budget TEXT NOT NULL,
    population TEXT NOT NULL,
    sd REAL NOT NULL,
    architectures INTEGER NOT NULL,
    seeds INTEGER NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (dataset, budget, population)
)
"""


def _compressing(cuts: Sequence[Cut]) -> list[list[float]]:
    # Only cuts that compress change the trained model; plain split positions do not.
    return [[c.position, c.bottleneck, c.bits] for c in sorted(cuts, key=lambda c: c.position)
            if c.compresses]


CODE_VERSION = 3
"""Version of the code an accuracy comes from (model building, proxy training, quantisation),
part of every key: bump it whenever any of them changes what a training run gives. 1: keys
without a version (up to issue 11); 2: a failure to run is found before training, transient
errors are not cached, the device is in the key; 3: CPU training on one torch thread
(:func:`models.train.one_thread`), so a key's accuracy no longer depends on the worker count
or the machine's cores."""

VARIANT_TRAINING = "inherit-2"
"""How a compressed variant is trained: from its parent's weights, its bottleneck started as
principal components (:meth:`models.build.ChainModel.fit_codecs`), fine-tuned. Part of the key of
every variant, so variants trained another way (before: from scratch) are never served; change it
whenever variant training changes."""


def _budget_key(budget: ProxyBudget, variant: bool) -> dict[str, object]:
    out = budget.to_dict()
    if not variant:  # the fine-tuning settings do not change an uncompressed architecture's run
        out = {k: v for k, v in out.items() if not k.startswith("finetune_")}
    return out


def _budget_json(budget: ProxyBudget) -> str:
    """The budget as the noise table keys it, with the code version: noise measured with other
    training code is not served either."""
    return json.dumps({**_budget_key(budget, variant=False), "code": CODE_VERSION},
                      sort_keys=True)


def cache_key(spec: ArchSpec, dataset: str, budget: ProxyBudget, seed: int,
              cuts: Sequence[Cut] = (), device: str = "cpu", finetuned: bool = False) -> str:
    """SHA-256 of the canonical JSON of everything the accuracy depends on.

    ``dataset`` should be a :attr:`models.data.Dataset.key`, which includes the split;
    ``device`` a :func:`models.train.device_tag` (``cpu``, or ``cuda:`` and the GPU). The same
    key names the architecture's trained weights (:meth:`AccuracyCache.weights_path`).
    ``finetuned``: an uncompressed model fine-tuned from its parent's weights the way a
    compressed variant is (the same key parts as a variant's), not the parent itself.
    """
    compressing = _compressing(cuts)
    variant = bool(compressing) or finetuned
    parts: list[object] = [spec.to_dict()["blocks"], compressing, dataset,
                           _budget_key(budget, variant), seed, device, f"code-{CODE_VERSION}"]
    if variant:
        parts.append(VARIANT_TRAINING)
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class AccuracyCache:
    """``get``/``put`` accuracies; ``get_or_compute`` trains only on a miss."""

    def __init__(self, path: str | os.PathLike[str], timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

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
            budget: ProxyBudget, seed: int, cuts: Sequence[Cut] = ()) -> bool:
        """Store a deterministic result; a transient one (``status: error``) is not stored, so
        that the next run trains again. Returns whether it was stored."""
        if not result.deterministic:
            return False
        acc = None if result.accuracy != result.accuracy else result.accuracy  # NaN -> NULL
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO accuracy VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, spec.to_json(), json.dumps(_compressing(cuts)), dataset,
                 json.dumps(budget.to_dict(), sort_keys=True), seed, acc, result.train_time_s,
                 result.status, result.message, time.time()),
            )
        return True

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, so concurrent writers queue), committed when
        the block ends, rolled back if it raises."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def noise(self, dataset: str, budget: ProxyBudget, population: str
              ) -> tuple[float, int, int, str] | None:
        """The measured seed-to-seed standard deviation of one accuracy under ``budget`` on
        ``dataset`` (a :attr:`Dataset.key`) over ``population`` (``space:tiny``, or one fixed
        architecture): ``(sd, architectures, seeds, source)``, or None."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT sd, architectures, seeds, source FROM proxy_noise WHERE "
                             "dataset = ? AND budget = ? AND population = ?",
                             (dataset, _budget_json(budget), population)).fetchone()
        return None if row is None else (float(row[0]), int(row[1]), int(row[2]), str(row[3]))

    def put_noise(self, dataset: str, budget: ProxyBudget, population: str, sd: float,
                  architectures: int, seeds: int, source: str) -> None:
        """Record a measurement, unless one with more degrees of freedom is already there."""
        if not math.isfinite(sd) or architectures < 1 or seeds < 2:
            return
        key = (dataset, _budget_json(budget), population)
        with self._transaction() as db:
            row = db.execute("SELECT architectures, seeds FROM proxy_noise WHERE dataset = ? "
                             "AND budget = ? AND population = ?", key).fetchone()
            if row is None or row[0] * (row[1] - 1) <= architectures * (seeds - 1):
                db.execute("INSERT OR REPLACE INTO proxy_noise VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (*key, sd, architectures, seeds, source))

    def weights_path(self, key: str) -> Path:
        """Where the weights trained under ``key`` are kept: ``NAME.weights/KEY.pt`` beside the
        database ``NAME.sqlite``."""
        return self.path.with_suffix(".weights") / f"{key}.pt"

    def save_weights(self, key: str, state: dict[str, torch.Tensor]) -> None:
        """Write atomically (a temporary file renamed into place): a killed writer leaves either
        no file or the whole one."""
        path = self.weights_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(state, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_weights(self, key: str) -> dict[str, torch.Tensor] | None:
        """The weights saved under ``key``, or None (also for an unreadable file)."""
        path = self.weights_path(key)
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None
        return state if isinstance(state, dict) else None

    _COLUMNS = ("key", "arch", "cuts", "dataset", "budget", "seed", "accuracy", "train_time_s",
                "status", "message")

    def export_csv(self, path: str | os.PathLike[str]) -> int:
        """Write every cached accuracy (not the weights, nor the noise) to a CSV file, sorted
        by key, for another cache to :meth:`import_csv`; returns the number of rows. The file
        is written whole or not at all."""
        import csv

        with closing(self._connect()) as db:
            rows = db.execute(f"SELECT {', '.join(self._COLUMNS)} FROM accuracy "
                              "ORDER BY key").fetchall()
        out = Path(path)
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(self._COLUMNS)
            writer.writerows(["" if v is None else (repr(v) if isinstance(v, float) else v)
                              for v in row] for row in rows)
        os.replace(tmp, out)
        return len(rows)

    def import_csv(self, path: str | os.PathLike[str]) -> int:
        """Add the rows of a CSV file written by :meth:`export_csv` (keys already here keep
        their rows), in one transaction; returns the number of rows added. Every row is
        checked first (a 64-digit key, JSON architecture, cuts and budget, an accuracy in
        [0, 1] exactly when the status is ``ok``, a finite training time); a ValueError names
        the file and the line, and nothing is added. The keys are taken as they are: a row
        whose key today's code would not compute (another code version) is never asked for."""
        import csv

        values = []
        seen: set[str] = set()
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != self._COLUMNS:
                raise ValueError(f"{path}: expected the columns {', '.join(self._COLUMNS)}")
            for line, row in enumerate(reader, start=2):
                try:
                    if None in row or None in row.values():
                        raise ValueError("a row with more or fewer fields than the header")
                    key = row["key"]
                    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                        raise ValueError(f"key {key!r} is not a SHA-256 in hex")
                    if key in seen:
                        raise ValueError(f"key {key} appears twice")
                    seen.add(key)
                    for column in ("arch", "cuts", "budget"):
                        json.loads(row[column])
                    acc = None if row["accuracy"] == "" else float(row["accuracy"])
                    ok = row["status"] == "ok"
                    if row["status"] not in ("ok", "diverged", "failed") or (acc is None) == ok \
                            or (acc is not None and not 0.0 <= acc <= 1.0):
                        raise ValueError(f"status {row['status']!r} with accuracy "
                                         f"{row['accuracy']!r}")
                    train_time = float(row["train_time_s"])
                    if not (math.isfinite(train_time) and train_time >= 0):
                        raise ValueError(f"train_time_s {row['train_time_s']!r}")
                    values.append((key, row["arch"], row["cuts"], row["dataset"],
                                   row["budget"], int(row["seed"]), acc, train_time,
                                   row["status"], row["message"], time.time()))
                except (TypeError, ValueError) as exc:  # json's errors are ValueErrors
                    raise ValueError(f"{path}, line {line}: {exc}") from None
        with self._transaction() as db:
            before = db.execute("SELECT COUNT(*) FROM accuracy").fetchone()[0]
            db.executemany("INSERT OR IGNORE INTO accuracy VALUES "
                           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            after = db.execute("SELECT COUNT(*) FROM accuracy").fetchone()[0]
        return int(after - before)

    def __len__(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM accuracy").fetchone()[0])

    def get_or_compute(self, spec: ArchSpec, dataset: str, budget: ProxyBudget, seed: int,
                       compute: Callable[[], TrainResult],
                       cuts: Sequence[Cut] = (), device: str = "cpu"
                       ) -> tuple[TrainResult, bool]:
        """(result, was_cached). ``compute`` runs only on a miss; its result is stored (when
        deterministic)."""
        key = cache_key(spec, dataset, budget, seed, cuts, device)
        hit = self.get(key)
        if hit is not None:
            return hit, True
        result = compute()
        self.put(key, result, spec=spec, dataset=dataset, budget=budget, seed=seed, cuts=cuts)
        return result, False
