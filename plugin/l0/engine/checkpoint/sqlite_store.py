"""SQLite checkpoint store: the embedded default.

WAL journal (readers in the HTTP process never block the writer in the engine
process), ``synchronous=NORMAL`` (a killed writer loses no committed
transaction and never leaves a corrupt file; only an OS crash may drop the
newest ones), the file created 0600 before SQLite opens it (its -wal/-shm
files inherit that mode). One connection per thread. Expired rows are never
returned, and a write purges them every ``PURGE_EVERY`` writes or once a
``purge_s`` (a quarter of the TTL, at most 5 minutes) has passed since the
last purge, whichever comes first: while the engine writes, no row outlives
its expiry by more than ``purge_s`` and the table holds at most the keys
written in ``ttl_s + purge_s``.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from l0.contract import Record
from l0.engine.checkpoint.store import StoreUnavailable, check_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS l0_checkpoints (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    expires REAL NOT NULL
)"""
PURGE_EVERY = 256          # writes between purges of expired rows, at most
PURGE_S_MAX = 300.0        # seconds between them, at most (see purge_s)


class SqliteStore:
    def __init__(self, path: str | os.PathLike, ttl_s: int) -> None:
        self.path = Path(path)
        self.url = f"sqlite://{self.path}"
        self.ttl_s = ttl_s
        self._local = threading.local()
        self._writes = 0
        # A count alone lets expired rows pile up while writes are rare.
        self.purge_s = min(ttl_s / 4, PURGE_S_MAX)
        self._purged_at = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Create (or keep) the file owner-only before SQLite touches it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        with self._conn() as db:
            db.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"l0: sqlite store {self.path}: {exc}") from None
            self._local.db = db
        return db

    def get(self, key: str) -> Record | None:
        check_key(key)
        try:
            row = self._conn().execute(
                "SELECT value FROM l0_checkpoints WHERE key = ? AND expires > ?", (key, time.time())
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"l0: sqlite store {self.path}: {exc}") from None
        return None if row is None else Record.from_json(row[0])

    def put_many(self, records: Iterable[Record]) -> None:
        now = time.time()
        rows = [(check_key(r.key), r.to_json(), now + self.ttl_s) for r in records]
        if not rows:
            return
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO l0_checkpoints (key, value, expires) VALUES (?, ?, ?)",
                           rows)
            self._writes += len(rows)
            if self._writes >= PURGE_EVERY or time.monotonic() - self._purged_at >= self.purge_s:
                self._writes, self._purged_at = 0, time.monotonic()
                db.execute("DELETE FROM l0_checkpoints WHERE expires <= ?", (now,))
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreUnavailable(f"l0: sqlite store {self.path}: {exc}") from None

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self._conn().execute("DELETE FROM l0_checkpoints WHERE key = ?", (key,))
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"l0: sqlite store {self.path}: {exc}") from None

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
