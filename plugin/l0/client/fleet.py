"""What a client knows of each endpoint's health: cooldowns after failures,
and the answers of L0 servers' ``/l0/health``. Pure bookkeeping, no I/O.

A failure (network, "not now", a stall) puts its endpoint in *cooldown*:
``cooldown_s`` after the first one in a row, doubling with each further one
up to ``max_cooldown_s``, or the server's ``Retry-After`` when that is
longer. While an endpoint cools down, a stream that has somewhere else to go
(another endpoint serving the same model) goes there, and a new stream does
not start on it. A token from the endpoint, or a ``200`` from its
``/l0/health``, ends the cooldown. The fleet also counts the streams on
each endpoint (from the moment one is chosen until the stream moves or
ends), so the streams that fail together (every stream of a killed replica)
spread over the ready peers instead of all moving to the first one listed.
One :class:`Fleet` is shared by every stream of a wrapped client
(``l0.wrap(..., fleet=...)`` shares one across clients), so one stream's
failure spares the others the same wait; entries are keyed by the
endpoint's name (its base URL).

Thread-safe in the way the client uses it: each call reads or replaces one
entry, and the stream counts change under a lock (the sync client runs
streams on several threads).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

PROBE_TTL_S = 1.0       # a /l0/health answer is reused this long by every stream


@dataclass(frozen=True)
class EndpointHealth:
    failures: int = 0            # in a row, since the last token or healthy probe
    until: float = 0.0           # cooling down until this time (the fleet's clock)
    probed: float = float("-inf")  # when /l0/health was last read
    healthy: bool | None = None  # what it said (None: never asked, or not an L0 server)


class Fleet:
    """Per-endpoint health, shared by the streams of one or more clients.
    ``clock``: monotonic seconds (tests pass their own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._book: dict[str, EndpointHealth] = {}
        self._busy: dict[str, int] = {}   # streams on each endpoint
        self._counting = threading.Lock()  # a count is read and written: one thread at a time

    def began(self, name: str) -> None:
        """A stream is now on ``name`` (each is ended by :meth:`ended`)."""
        with self._counting:
            self._busy[name] = self._busy.get(name, 0) + 1

    def ended(self, name: str) -> None:
        with self._counting:
            n = self._busy.get(name, 0) - 1
            if n > 0:
                self._busy[name] = n
            else:
                self._busy.pop(name, None)

    def busy(self, name: str) -> int:
        """Streams on ``name`` (this fleet's only)."""
        return self._busy.get(name, 0)

    def get(self, name: str) -> EndpointHealth:
        return self._book.get(name, EndpointHealth())

    def failed(self, name: str, cooldown_s: float, max_cooldown_s: float,
               retry_after_s: float | None = None) -> float:
        """Records a failure of ``name``; returns the cooldown it now has
        (0 when ``cooldown_s`` is 0: cooldowns off)."""
        h = self.get(name)
        n = h.failures + 1
        cool = 0.0
        if cooldown_s > 0:
            cool = min(cooldown_s * 2 ** (n - 1), max_cooldown_s)
            if retry_after_s is not None:
                cool = max(cool, min(retry_after_s, max_cooldown_s))
        now = self.clock()
        self._book[name] = EndpointHealth(n, max(h.until, now + cool) if cool else h.until, h.probed, h.healthy)
        return cool

    def ok(self, name: str) -> None:
        """The endpoint delivered: its cooldown and failure count end."""
        h = self._book.get(name)
        if h is not None and (h.failures or h.until):
            self._book[name] = EndpointHealth(0, 0.0, h.probed, h.healthy)

    def probed(self, name: str, healthy: bool, cooldown_s: float, max_cooldown_s: float,
               retry_after_s: float | None = None) -> None:
        """Records an ``/l0/health`` answer: healthy ends a cooldown, unhealthy
        (503, unreachable) starts one where none runs."""
        now = self.clock()
        h = self.get(name)
        if healthy:
            self._book[name] = EndpointHealth(0, 0.0, now, True)
            return
        self._book[name] = EndpointHealth(h.failures, h.until, now, False)
        if self.cooling(name) <= 0:
            self.failed(name, cooldown_s, max_cooldown_s, retry_after_s)

    def probing(self, name: str) -> None:
        """A health check of ``name`` starts: the streams that fail beside this
        one (every stream of a killed replica fails at once) go by what is
        known instead of asking again, until the answer or the probe TTL."""
        h = self.get(name)
        self._book[name] = EndpointHealth(h.failures, h.until, self.clock(), h.healthy)

    def cooling(self, name: str) -> float:
        """Seconds of cooldown left (0: ready)."""
        return max(0.0, self.get(name).until - self.clock())

    def needs_probe(self, name: str, ttl_s: float = PROBE_TTL_S) -> bool:
        return self.clock() - self.get(name).probed >= ttl_s

    def snapshot(self, names: list[str]) -> dict[str, float]:
        """Each name's cooldown left, seconds (rounded to ms)."""
        return {n: round(self.cooling(n), 3) for n in names}
