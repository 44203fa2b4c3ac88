"""Where a stream's next attempt goes after a failure, and how long it waits
first: the retry budget (by count, and by time) over a list of endpoints
whose health a :class:`~l0.client.fleet.Fleet` keeps.

The rules (the policy's numbers are :class:`~l0.client.retry.Retry`'s):

* A fatal failure (or one the caller vetoed) ends the stream. Otherwise the
  failed endpoint's budget is charged (:func:`~l0.client.retry.decide`); an
  endpoint that used up its model ``attempts``, or can't continue what was
  delivered, is out for the rest of the stream; one that used up
  ``max_retries`` is out for this round.
* A network or "not now" failure, or a stall, puts the endpoint in cooldown.
  Endpoints serving the same model as the failed one (its *peers*: replicas)
  come first: of those not cooling down (their ``/l0/health`` asked, for
  those that can say), the one with the fewest of the fleet's streams on
  it gets the next attempt at once (list order breaks a tie), so the
  streams of a failed replica spread over its peers. With none ready, the
  failed endpoint is retried after the policy's backoff while it has
  retries, else the stream waits for the peer whose cooldown ends first
  (a :class:`~l0.client.events.Waiting` event).
  Cooldowns off (``cooldown_s=0``): the failed endpoint is retried first,
  as plain fallbacks are.
* With no peer left, the next endpoint in list order (a fallback to another
  model) takes over, as before.
* With every endpoint used up, a stream with a time budget
  (``Retry.deadline_for``) starts another round while the budget lasts; the
  budget counts from the stream's first failure since its last token.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Sequence

from l0.client import events as ev
from l0.client.deadline import within
from l0.client.fleet import Fleet
from l0.client.retry import (Category, Decision, Retry, RetryState, Stalled, _short, decide, headers_of,
                             retry_after_s)

PROBE_LIMIT_S = 0.5     # the most a choice waits on /l0/health answers (each is asked for as long)
WAIT_STEP_S = 1.0       # while waiting for a cooldown, replicas that answer health checks are asked this often


class GiveUp(Exception):
    """No endpoint is left within the budget (the caller re-raises the failure)."""


class Route:
    """The endpoints of one stream and what each has left. ``emit(cls,
    **fields)`` sends events; ``sleep`` waits (tests record it)."""

    def __init__(self, endpoints: Sequence[Any], retry: Retry, fleet: Fleet | None,
                 emit: Callable[..., Any], sleep: Callable[[float], Awaitable[None]],
                 clock: Callable[[], float] = time.time,
                 fallback_delay: Callable[[int], float] | None = None) -> None:
        self.endpoints = list(endpoints)
        self.retry = retry
        self.fleet = fleet if fleet is not None else Fleet()
        self.emit = emit
        self.sleep = sleep
        self.clock = clock
        self.fallback_delay = fallback_delay
        self.states = [RetryState() for _ in self.endpoints]
        self.out: set[int] = set()       # never again in this stream
        self.spent: set[int] = set()     # used up its retries this round
        self.entered: set[int] = set()
        self.current: int | None = None
        self.budget_s = 0.0              # the time budget (0: counts only); set by arm()
        self.streak: float | None = None  # when (``clock``) the first failure since the last token came
        self.rounds = 1
        self.claimed: str | None = None   # the endpoint this stream counts on in the fleet

    def _claim(self, j: int) -> None:
        """The stream is now on ``j``: counted there in the fleet (and no
        longer where it was). Made when ``j`` is chosen, before any await,
        so the streams that fail together see each other's choices."""
        name = self.endpoints[j].name
        if self.claimed != name:
            self.release()
            self.fleet.began(name)
            self.claimed = name

    def release(self) -> None:
        """The stream ended: no longer counted on its endpoint."""
        if self.claimed is not None:
            self.fleet.ended(self.claimed)
            self.claimed = None

    # -- the stream's start and progress --------------------------------------
    def arm(self, l0: bool) -> None:
        """Sets the time budget once the stream knows whether it runs on L0 servers."""
        self.budget_s = self.retry.deadline_for(l0)

    def first(self) -> int:
        """The endpoint of the first attempt: the primary, unless it is cooling
        down and a peer is not."""
        if self.fleet.cooling(self.endpoints[0].name) > 0:
            for j in self._peers(0):
                if j != 0 and self.fleet.cooling(self.endpoints[j].name) <= 0:
                    return j
        return 0

    async def enter(self, j: int) -> Any:
        """Makes ``j`` the current endpoint: prepared once, a ``fallback``
        event when the stream moves, the caller's fallback delay on the
        first visit. Returns the endpoint."""
        ep = self.endpoints[j]
        self._claim(j)
        moved = self.current is not None and j != self.current
        if j not in self.entered:
            self.entered.add(j)
            if moved and self.fallback_delay is not None and j and self.fallback_delay(j) > 0:
                await self.sleep(self.fallback_delay(j))
            await ep.prepare()
        if moved or (self.current is None and j):
            self.emit(ev.FallbackStart, index=j, endpoint=ep.name, model=ep.model)
        self.current = j
        return ep

    def progress(self) -> None:
        """The current endpoint delivered: the failure streak and its cooldown end."""
        self.streak = None
        if self.current is not None:
            self.fleet.ok(self.endpoints[self.current].name)

    # -- after a failure --------------------------------------------------------
    async def after_failure(self, exc: BaseException, category: Category, attempt: int,
                            not_resumable: bool = False) -> int:
        """The endpoint of the next attempt, after waiting what it must.
        Raises :class:`GiveUp` when the stream should give up (fatal,
        vetoed, every endpoint used up, or past the time budget)."""
        i = self.current
        assert i is not None
        ep = self.endpoints[i]
        now = self.clock()
        if self.streak is None:
            self.streak = now
        if category in (Category.NETWORK, Category.TRANSIENT) or isinstance(exc, Stalled):
            self.fleet.failed(ep.name, self.retry.cooldown_s, self.retry.max_cooldown_s,
                              retry_after_s(headers_of(exc)))
        own: Decision | None = None
        if not_resumable:
            self.out.add(i)
            self.emit(ev.RetryGivenUp, attempt=attempt, category=category.value, why="not_resumable",
                      error=_short(exc))
        else:
            d = decide(self.retry, self.states[i], exc, category, clock=self.clock)
            if d.retry:
                own = d
            else:
                self.emit(ev.RetryGivenUp, attempt=attempt, category=category.value, why=d.why, error=_short(exc))
                if d.why in ("fatal", "vetoed"):
                    raise GiveUp(d.why)
                (self.out if d.why == "attempts" else self.spent).add(i)
        if self.budget_s and now - self.streak >= self.budget_s:
            self.emit(ev.RetryGivenUp, attempt=attempt, category=category.value, why="deadline",
                      error=_short(exc))
            raise GiveUp("deadline")
        j, delay, waited = await self._choose(i, own)
        if self.budget_s:   # never sleep past the budget
            delay = min(delay, max(0.0, self.budget_s - (self.clock() - self.streak)))
        if waited:
            names = [self.endpoints[k].name for k in range(len(self.endpoints)) if k not in self.out]
            self.emit(ev.Waiting, attempt=attempt, delay_s=round(delay, 3), endpoint=self.endpoints[j].name,
                      reason="cooldown", cooling=self.fleet.snapshot(list(dict.fromkeys(names))))
            return await self._wait(j, delay)
        if j == i and own is not None:
            self.emit(ev.RetryScheduled, attempt=attempt, category=category.value, delay_s=delay,
                      retries=self.states[i].retries, model_failures=self.states[i].model_failures)
        if delay > 0:
            await self.sleep(delay)
        return j

    async def _wait(self, j: int, delay: float) -> int:
        """Waits ``delay`` for ``j``'s cooldown to end; where its peers answer
        health checks, asks them again every :data:`WAIT_STEP_S` and takes
        the first that is back (a restarted replica need not sit out its
        cooldown). Returns the endpoint of the next attempt."""
        pool = [k for k in self._peers(j) if k not in self.out]
        asks = [k for k in pool if self.fleet.get(self.endpoints[k].name).healthy is not None]
        left = delay
        while left > 0:
            step = min(left, WAIT_STEP_S) if asks else left
            await self.sleep(step)
            left -= step
            if left > 0:
                await self._probe(asks)
                ready = [k for k in pool if self.fleet.cooling(self.endpoints[k].name) <= 0]
                if ready:
                    return ready[0]
        return j

    def _peers(self, i: int) -> list[int]:
        """``i`` and the endpoints serving the same (known) model, in list order."""
        model = self.endpoints[i].model
        if model is None:
            return [i]
        return [j for j, e in enumerate(self.endpoints) if j == i or e.model == model]

    async def _choose(self, i: int, own: Decision | None) -> tuple[int, float, bool]:
        """(next endpoint, delay, whether the delay is a wait for a cooldown)."""
        if own is not None and self.retry.cooldown_s == 0:
            return i, own.delay_s, False            # cooldowns off: retry here first
        usable = [j for j in range(len(self.endpoints)) if j not in self.out and j not in self.spent]
        if not usable:
            left = [j for j in range(len(self.endpoints)) if j not in self.out]
            if not self.budget_s or not left:
                raise GiveUp("exhausted")
            self.rounds += 1                         # every endpoint gets its retries again
            self.spent.clear()
            for j in left:
                self.states[j].retries = 0
                self.states[j].by_category.clear()
            usable = left
        pool = [j for j in self._peers(i) if j in usable]
        if not pool:                                 # no replica left: the next fallback, in list order
            pool = [j for j in self._peers(usable[0]) if j in usable]
            own = None
        others = [j for j in pool if j != i]
        await self._probe(others)
        ready = [j for j in others if self.fleet.cooling(self.endpoints[j].name) <= 0]
        if ready:
            # The least busy: a killed replica's streams all fail at once,
            # and all going to the first peer listed doubled its batch while
            # another sat at its own (seen in the chaos bench). Claimed now:
            # the streams failing beside this one choose next.
            j = min(ready, key=lambda k: self.fleet.busy(self.endpoints[k].name))
            self._claim(j)
            return j, 0.0, False
        if own is not None:
            return i, own.delay_s, False
        j = min(pool, key=lambda k: (self.fleet.cooling(self.endpoints[k].name), k))
        wait = self.fleet.cooling(self.endpoints[j].name)
        return j, wait, wait > 0

    async def _probe(self, js: list[int]) -> None:
        """Asks ``/l0/health`` of those endpoints that can say (and were not
        asked within the fleet's probe TTL), concurrently, for at most
        :data:`PROBE_LIMIT_S`. What they say goes to the fleet."""
        eps = [self.endpoints[j] for j in js]
        eps = [e for e in dict((e.name, e) for e in eps).values()
               if hasattr(e, "health") and self.fleet.needs_probe(e.name)]
        if not eps:
            return
        for e in eps:
            self.fleet.probing(e.name)

        async def one(e):
            try:
                said = await e.health()
            except Exception:  # noqa: BLE001 - a probe that fails says nothing
                return
            if said is not None:
                healthy, retry_after = said
                self.fleet.probed(e.name, healthy, self.retry.cooldown_s, self.retry.max_cooldown_s, retry_after)
        try:
            await within(asyncio.gather(*(one(e) for e in eps)), PROBE_LIMIT_S)
        except asyncio.TimeoutError:
            pass
