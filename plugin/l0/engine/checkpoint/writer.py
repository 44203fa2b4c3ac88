"""Background checkpoint writer: the serving loop hands it snapshots and never waits.

``offer(record)`` puts the record in a pending map keyed by checkpoint key
(a newer snapshot of the same request replaces an unwritten older one) under
a lock held for a dict assignment, and returns. A daemon thread takes the
whole map, writes it in one batch (``put_many``), and on failure puts back
what was not superseded meanwhile and retries with bounded backoff. While the
store is slow or down serving goes on: snapshots coalesce, ``lag`` (snapshots
offered since the last successful write) grows, a warning is logged at most
once a minute, and writes resume when the store is back. ``max_pending`` keys
bound the memory; past it the oldest finished, then oldest, entries are
dropped and counted in ``dropped``.

The store is opened by the thread (``store_factory``), so an unreachable
store never delays engine start-up.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from l0.contract import Record
from l0.engine.checkpoint.store import CheckpointStore, StoreUnavailable

log = logging.getLogger("l0.engine.checkpoint")

_DELETE = object()  # pending marker: delete this key


class CheckpointWriter:
    def __init__(self, store_factory: Callable[[], CheckpointStore], *, batch_max: int = 256,
                 max_pending: int = 10000, backoff_s: tuple[float, float] = (0.2, 5.0),
                 warn_every_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 gather_s: float = 0.05) -> None:
        """``gather_s``: after the first snapshot of a batch arrives, the
        thread waits this long for more before writing (``flush``/``close``
        cut it short). A batch of requests crosses its checkpoint interval in
        the same step: one transaction for all of them instead of one per
        wake-up, and far fewer switches of Python's GIL away from the engine
        thread (measured: bench/bench_host_cost.py)."""
        self._factory = store_factory
        self.gather_s = gather_s
        self._hurry = threading.Event()
        self._store: CheckpointStore | None = None
        self.batch_max = batch_max
        self.max_pending = max_pending
        self.backoff_s = backoff_s
        self.warn_every_s = warn_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, object] = {}
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._stop = False
        self._deadline = 0.0
        self._idle = threading.Event()
        self._idle.set()
        self._last_warn = -1e18
        # Counters (read without the lock: monotone ints, for metrics and tests).
        self.offered = 0
        self.written = 0
        self.coalesced = 0
        self.dropped = 0
        self.failures = 0
        self.lag = 0
        self.cpu_s = 0.0  # CPU time the writer thread spent encoding and writing
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="l0-checkpoint-writer", daemon=True)
        self._thread.start()

    # -- serving-loop side: O(1), never waits on I/O -------------------------
    def offer(self, record) -> None:
        """``record``: a :class:`Record`, or a snapshot that encodes as one
        (``.key``, ``.finished``, ``.to_json()``, what the stores read):
        encoded on this thread, when written, so the serving loop only hands
        over references."""
        self._put(record.key, record)

    def delete(self, key: str) -> None:
        self._put(key, _DELETE)

    def _put(self, key: str, value: object) -> None:
        with self._lock:
            if key in self._pending:
                self.coalesced += 1
            elif len(self._pending) >= self.max_pending:
                self._drop_one()
            self._pending[key] = value
            self.offered += 1
            self.lag += 1
            self._idle.clear()
        self._wake.set()

    def _drop_one(self) -> None:
        victim = next((k for k, v in self._pending.items() if v is not _DELETE and v.finished),
                      next(iter(self._pending)))
        del self._pending[victim]
        self.dropped += 1

    # -- writer thread ----------------------------------------------------
    def _run(self) -> None:
        delay = 0.0
        while True:
            if delay:
                self._halt.wait(delay)  # back off; only close() cuts it short
            else:
                self._wake.wait()
                if self.gather_s > 0:
                    self._hurry.wait(self.gather_s)
            self._wake.clear()
            with self._lock:
                if not self._pending:
                    self._idle.set()
                    self._hurry.clear()
                    if self._stop:
                        return
                    delay = 0.0
                    continue
                batch = dict(list(self._pending.items())[: self.batch_max])
                for k in batch:
                    del self._pending[k]
            try:
                self._write(batch)
            except Exception as exc:  # the store is down / slow / broken: keep serving
                self.failures += 1
                self._requeue(batch)
                self._warn(exc)
                if self._stop and self._clock() >= self._deadline:
                    return
                delay = min(max(delay * 2, self.backoff_s[0]), self.backoff_s[1])
                continue
            delay = 0.0
            with self._lock:
                self.written += sum(1 for v in batch.values() if v is not _DELETE)
                if not self._pending:
                    self.lag = 0
                    self._idle.set()
                    self._hurry.clear()
                    if self._stop:
                        return
                else:
                    self._wake.set()

    def _write(self, batch: dict[str, object]) -> None:
        t0 = time.thread_time()
        try:
            if self._store is None:
                self._store = self._factory()
            records = [v for v in batch.values() if v is not _DELETE]
            self._store.put_many(records)
            for k, v in batch.items():
                if v is _DELETE:
                    self._store.delete(k)
            self.batches += 1
        finally:
            self.cpu_s += time.thread_time() - t0

    def _requeue(self, batch: dict[str, object]) -> None:
        with self._lock:
            for k, v in batch.items():
                self._pending.setdefault(k, v)  # a newer snapshot wins over the failed one

    def _warn(self, exc: Exception) -> None:
        now = self._clock()
        if now - self._last_warn >= self.warn_every_s:
            self._last_warn = now
            reason = str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__
            log.warning("l0: checkpoint store unavailable, serving continues; %d snapshot(s) waiting: %s",
                        self.lag, reason)

    # -- lifecycle ----------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything offered so far is written (tests, shutdown).
        Returns False on timeout."""
        self._hurry.set()
        self._wake.set()
        return self._idle.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending (trying until ``timeout``), then stop."""
        self._deadline = self._clock() + timeout
        self._stop = True
        self._hurry.set()
        self._halt.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                pass
