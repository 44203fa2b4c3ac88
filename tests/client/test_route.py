"""Where a stream's attempts go (``l0.client.route``) and what the client
knows of each endpoint (``l0.client.fleet``): cooldowns, replicas first,
health checks, waiting for the fleet, rounds within a time budget. Streams
over factories standing for replicas of one model; sleeps are recorded and
the clocks are the tests' own, so nothing waits."""
from __future__ import annotations

import asyncio

import pytest

from l0.client.adapters import as_adapter
from l0.client.endpoints import FactoryEndpoint
from l0.client.fleet import Fleet
from l0.client.retry import Retry
from l0.client.session import Session


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Replica(FactoryEndpoint):
    """A factory endpoint serving ``model``: each call takes the next of
    ``script`` ("ok": a whole answer; "refuse": connection refused;
    "break": one piece then a reset); "ok" once the script is used up."""

    def __init__(self, name, script=(), model="m", health=None):
        self.script, self.calls, self.said = list(script), 0, health

        def factory(received: str):
            self.calls += 1
            what = self.script.pop(0) if self.script else "ok"

            async def gen():
                if what == "refuse":
                    raise ConnectionRefusedError(name)
                if not received:
                    yield f"from {name}: one"
                if what == "break":
                    if received:
                        yield f" +{name}"
                    raise ConnectionResetError(name)
                yield f" two ({name})"
            return gen()
        super().__init__(factory, name)
        self.model = model

    async def health(self):
        return self.said() if callable(self.said) else self.said


class Run:
    def __init__(self, endpoints, fleet=None, **retry):
        self.sleeps, self.events, self.clock = [], [], Clock()
        self.fleet = fleet if fleet is not None else Fleet(clock=self.clock)
        retry.setdefault("wait", lambda rs: 0.25)
        self.session = Session(endpoints, kind="run", retry=Retry(**retry), emit=self.events.append,
                               sleep=self.sleep, clock=self.clock, require_finish=False,
                               adapter=as_adapter(None, "run"), fleet=self.fleet)

    async def sleep(self, s):
        self.sleeps.append(s)
        self.clock.t += s

    def text(self):
        async def go():
            return "".join([c async for c in self.session])
        return asyncio.run(go())

    def kinds(self):
        return [(e.type, getattr(e, "endpoint", None)) for e in self.events
                if e.type in ("attempt_start", "fallback", "wait", "retry_scheduled")]


def test_the_fleet_book_cooldowns_double_take_retry_after_and_end_on_a_token_or_a_healthy_probe():
    clock = Clock()
    f = Fleet(clock=clock)
    assert f.cooling("a") == 0 and f.needs_probe("a")
    assert f.failed("a", 5.0, 60.0) == 5.0 and f.cooling("a") == 5.0
    assert f.failed("a", 5.0, 60.0) == 10.0 and f.cooling("a") == 10.0
    assert f.failed("a", 5.0, 60.0, retry_after_s=30.0) == 30.0
    assert f.failed("a", 5.0, 60.0) == 40.0 and f.failed("a", 5.0, 60.0) == 60.0   # capped
    clock.t += 59.5
    assert f.cooling("a") == 0.5 and f.snapshot(["a", "b"]) == {"a": 0.5, "b": 0.0}
    f.ok("a")
    assert f.cooling("a") == 0 and f.get("a").failures == 0
    f.probed("b", False, 5.0, 60.0, retry_after_s=7.0)
    assert f.cooling("b") == 7.0 and not f.needs_probe("b") and f.get("b").healthy is False
    f.probed("b", False, 5.0, 60.0)          # already cooling: not stretched
    assert f.cooling("b") == 7.0
    clock.t += 1.0
    assert f.needs_probe("b")
    f.probed("b", True, 5.0, 60.0)
    assert f.cooling("b") == 0 and f.get("b").healthy is True
    assert f.failed("c", 0.0, 60.0) == 0.0 and f.cooling("c") == 0   # cooldowns off
    # a check in flight: the streams failing beside it don't ask again (and what was known stays)
    clock.t += 5.0
    assert f.needs_probe("b")
    f.probing("b")
    assert not f.needs_probe("b") and f.get("b").healthy is True and f.cooling("b") == 0


def test_a_failed_replica_is_left_at_once_for_a_ready_one_and_the_next_stream_starts_there():
    a, b, c = Replica("a", ["break"]), Replica("b"), Replica("c")
    run = Run([a, b, c])
    assert run.text() == "from a: one two (b)"
    assert run.kinds() == [("attempt_start", "a"), ("fallback", "b"), ("attempt_start", "b")]
    assert run.sleeps == []          # no backoff: another replica was ready
    assert run.fleet.cooling("a") == 5.0 and run.fleet.cooling("b") == 0
    # the next stream of the same client: a is cooling down, so it starts on b
    nxt = Run([a, b, c], fleet=run.fleet)
    assert nxt.text() == "from b: one two (b)"
    assert nxt.kinds() == [("fallback", "b"), ("attempt_start", "b")]
    assert nxt.events[0].type == "fallback" and nxt.events[0].index == 1 and a.calls == 1


def test_replicas_come_before_a_fallback_to_another_model_and_it_takes_over_when_they_are_used_up():
    a, other, c = Replica("a", ["refuse"]), Replica("other", model="small"), Replica("c", ["refuse"] * 9)
    run = Run([a, other, c], max_retries=1)
    assert run.text() == "from a: one two (a)"
    # a fails: c (same model) at once, never "other"; c fails with a cooling down: c again after
    # its backoff; then c has no retry left: the stream waits for a (the first replica ready)
    assert run.kinds() == [("attempt_start", "a"), ("fallback", "c"), ("attempt_start", "c"),
                           ("retry_scheduled", None), ("attempt_start", "c"), ("wait", "a"), ("fallback", "a"),
                           ("attempt_start", "a")]
    assert run.sleeps == [0.25, 4.75] and other.calls == 0
    a2, other2, c2 = Replica("a", ["refuse"] * 9), Replica("other", model="small"), Replica("c", ["refuse"] * 9)
    run = Run([a2, other2, c2], max_retries=1, deadline_s=0)
    assert run.text() == "from other: one two (other)"
    assert [k for k in run.kinds() if k[0] == "attempt_start"] == [
        ("attempt_start", "a"), ("attempt_start", "c"), ("attempt_start", "c"), ("attempt_start", "a"),
        ("attempt_start", "other")]


def test_with_every_replica_cooling_down_the_stream_waits_for_the_first_ready_one():
    a, b = Replica("a", ["refuse"] * 2), Replica("b", ["refuse"])
    run = Run([a, b], max_retries=0, deadline_s=600)
    assert run.text() == "from b: one two (b)"
    # a fails (5 s of cooldown), b fails (5 s): a round later, wait for a (listed first); a fails
    # again (10 s now) while b's cooldown is over: b at once
    waits = [e for e in run.events if e.type == "wait"]
    assert [(w.endpoint, w.delay_s, w.cooling) for w in waits] == [("a", 5.0, {"a": 5.0, "b": 5.0})]
    assert run.sleeps == [5.0] and run.session.route.rounds == 2
    assert [e.endpoint for e in run.events if e.type == "attempt_start"] == ["a", "b", "a", "b"]


def test_rounds_go_on_within_the_time_budget_and_stop_at_its_end():
    a, b = Replica("a", ["refuse"] * 5), Replica("b", ["refuse"] * 5)
    run = Run([a, b], max_retries=1, deadline_s=600)
    assert run.text() == "from b: one two (b)"
    assert run.session.route.rounds == 3 and (a.calls, b.calls) == (4, 6)
    a, b = Replica("a", ["refuse"] * 50), Replica("b", ["refuse"] * 50)
    run = Run([a, b], max_retries=1, deadline_s=60)
    with pytest.raises(ConnectionRefusedError):
        run.text()
    gave_up = [e for e in run.events if e.type == "retry_given_up"]
    assert gave_up[-1].why == "deadline" and sum(run.sleeps) <= 60
    a, b = Replica("a", ["refuse"] * 9), Replica("b", ["refuse"] * 9)
    run = Run([a, b], max_retries=1, deadline_s=0)       # counts only: one round
    with pytest.raises(ConnectionRefusedError):
        run.text()
    assert a.calls + b.calls == 4 and run.session.route.rounds == 1


def test_a_token_ends_the_failure_streak_so_the_budget_counts_from_the_last_failure_run():
    def slow(replica, clock):      # every attempt takes 3 s
        inner = replica.factory

        def factory(received):
            clock.t += 3.0
            return inner(received)
        replica.factory = factory
        return replica
    # each break delivers a piece first: five failures 3 s apart, never 4 s without a token
    clock = Clock()
    a, b = Replica("a", ["break"] * 3), Replica("b", ["break"] * 2)
    run = Run([slow(a, clock), slow(b, clock)], max_retries=9, deadline_s=4.0)
    run.clock = run.session.clock = run.session.route.clock = clock
    assert run.text() == "from a: one +b +b two (b)" and (a.calls, b.calls) == (1, 3)
    assert not [e for e in run.events if e.type == "retry_given_up"]
    # refusals deliver nothing: the streak runs from the first, and the third is 6 s into it
    a, b = Replica("a", ["refuse"] * 3), Replica("b", ["refuse"] * 2)
    run = Run([slow(a, clock), slow(b, clock)], max_retries=9, deadline_s=4.0)
    run.session.clock = run.session.route.clock = clock
    with pytest.raises(ConnectionRefusedError):
        run.text()
    assert a.calls + b.calls == 3
    assert [e.why for e in run.events if e.type == "retry_given_up"] == ["deadline"]


def test_a_health_check_that_says_unhealthy_keeps_the_stream_off_that_replica():
    a = Replica("a", ["refuse"])
    b = Replica("b", health=(False, 7.0))     # draining: 503 with Retry-After 7
    c = Replica("c", health=(True, None))
    run = Run([a, b, c])
    assert run.text() == "from c: one two (c)" and b.calls == 0
    assert run.fleet.cooling("b") == 7.0 and run.fleet.get("c").healthy is True


def test_a_wait_ends_early_when_a_replica_says_it_is_back():
    run = None
    a = Replica("a", ["refuse"] * 9, health=(False, None))
    # b restarts: unreachable until 2.5 s into the wait, then healthy
    b = Replica("b", health=lambda: (run.clock.t >= 1002.5, None))
    run = Run([a, b], max_retries=0, deadline_s=600)
    assert run.text() == "from b: one two (b)"
    # a fails, b says it is down (5 s of cooldown): the stream waits for b, asking each second
    waits = [e for e in run.events if e.type == "wait"]
    assert [(w.endpoint, w.delay_s) for w in waits] == [("b", 5.0)]
    assert run.sleeps == [1.0, 1.0, 1.0]      # back at the third
    assert [e.endpoint for e in run.events if e.type == "attempt_start"] == ["a", "b"]


def test_cooldowns_off_retry_the_failed_endpoint_first():
    a, b = Replica("a", ["refuse"]), Replica("b")
    run = Run([a, b], cooldown_s=0)
    assert run.text() == "from a: one two (a)"
    assert run.kinds() == [("attempt_start", "a"), ("retry_scheduled", None), ("attempt_start", "a")]
    assert run.sleeps == [0.25]


def test_the_new_knobs_are_checked():
    for bad in ({"cooldown_s": -1}, {"max_cooldown_s": -1}, {"deadline_s": -5}):
        with pytest.raises(ValueError, match="must be >= 0"):
            Retry(**bad)
    assert Retry().deadline_for(True) == 300.0 and Retry().deadline_for(False) == 0.0
    assert Retry(deadline_s=5).deadline_for(False) == 5


def test_the_streams_of_a_failed_replica_spread_over_its_ready_peers_by_the_streams_on_each():
    def run_with(busy, script):
        fleet = Fleet(clock=Clock())
        for name in busy:                # other streams of this fleet are on these
            fleet.began(name)
        run = Run([Replica("a", script), Replica("b"), Replica("c")], fleet=fleet)
        return run.text(), fleet
    text, fleet = run_with(["b"], ["break"])
    assert text == "from a: one two (c)"             # c: ready and idle, though b is listed first
    assert (fleet.busy("a"), fleet.busy("b"), fleet.busy("c")) == (0, 1, 0)   # the stream's own count ended
    assert run_with(["c", "c", "b"], ["break"])[0] == "from a: one two (b)"   # b has fewer
    assert run_with(["b", "c"], ["refuse"])[0] == "from b: one two (b)"       # a tie: list order

    # streams failing together (each had its first piece from a, then a breaks them all at once)
    # choose one after another, each seeing the others' choices: they spread over b and c
    broken, moved, arrived = asyncio.Event(), asyncio.Event(), []

    def held(name, breaks):
        r = Replica(name)

        def factory(received):
            async def gen():
                if not received:
                    yield f"from {name}: one"
                    await broken.wait()
                    raise ConnectionResetError(name)
                arrived.append(name)         # every stream is on its new replica before any goes on
                if len(arrived) == 4:
                    moved.set()
                await moved.wait()
                yield f" two ({name})"
            return gen()
        r.factory = factory
        return r
    fleet = Fleet(clock=Clock())
    runs = [Run([held("a", True), held("b", False), held("c", False)], fleet=fleet) for _ in range(4)]

    async def together():
        its = [r.session.__aiter__() for r in runs]
        firsts = [await it.__anext__() for it in its]
        assert fleet.busy("a") == 4
        broken.set()

        async def rest(f, it):
            return f + "".join([c async for c in it])
        return await asyncio.gather(*(rest(f, it) for f, it in zip(firsts, its)))
    assert sorted(t[-3:] for t in asyncio.run(together())) == ["(b)", "(b)", "(c)", "(c)"]
    assert sorted(arrived) == ["b", "b", "c", "c"]
    assert fleet.busy("a") == fleet.busy("b") == fleet.busy("c") == 0

    # a stream the caller closes mid-way ends its count too
    fleet = Fleet(clock=Clock())
    run = Run([Replica("a"), Replica("b")], fleet=fleet)

    async def first_then_close():
        it = run.session.__aiter__()
        await it.__anext__()
        assert fleet.busy("a") == 1
        await it.aclose()
    asyncio.run(first_then_close())
    assert fleet.busy("a") == 0

