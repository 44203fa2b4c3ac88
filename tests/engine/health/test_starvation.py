"""Per-request token gaps (starvation), driven by a hand clock and plain lists
standing in for vLLM's live output lists (the same objects vLLM mutates)."""
import pytest

from l0.engine.health.starvation import BUCKETS, Histogram, StarvationTracker


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _buckets(tr):
    d = tr.to_dict()
    return dict(zip(d["le"], d["cumulative"])), d


def test_in_batch_gaps_are_step_times_and_the_first_token_is_not_a_gap():
    clk = Clock()
    tr = StarvationTracker(clock=clk)
    a, b = [], []
    tr.add(0, a)
    tr.add(1, b)
    for _ in range(4):
        clk.t += 0.02
        a.append(1)
        b.append(2)
        tr.step()
    cum, d = _buckets(tr)
    assert d["count"] == 6  # 4 tokens each, the first of each is not a gap
    assert cum[0.01] == 0 and cum[0.025] == 6
    assert d["sum"] == pytest.approx(6 * 0.02)


def test_a_request_out_of_the_batch_is_starved_and_observed_when_it_returns():
    clk = Clock()
    tr = StarvationTracker(clock=clk)
    out = []
    tr.add(3, out)
    out.append(7)
    tr.step()  # first token at t=100
    tr.remove(3)  # preempted / unscheduled
    clk.t += 7.0
    tr.step()  # the engine steps without it
    tr.add(5, out)  # the same list comes back, in another slot
    clk.t += 0.5
    out.append(8)
    tr.step()
    cum, d = _buckets(tr)
    assert d["count"] == 1 and d["sum"] == pytest.approx(7.5)
    assert cum[5.0] == 0 and cum[10.0] == 1 and d["worst_s"] == pytest.approx(7.5)


def test_moves_and_swaps_follow_the_rows():
    clk = Clock()
    tr = StarvationTracker(clock=clk)
    a, b = [1], [1]
    tr.add(0, a)
    tr.add(1, b)
    a.append(2)
    b.append(2)
    tr.step()
    tr.move(0, 1, swap=True)
    tr.move(1, 4, swap=False)  # a now at 4, b at 0
    clk.t += 0.2
    a.append(3)
    tr.step()
    cum, d = _buckets(tr)
    assert d["count"] == 1 and d["sum"] == pytest.approx(0.2)


def test_finished_requests_are_forgotten_after_the_horizon():
    clk = Clock()
    tr = StarvationTracker(clock=clk, horizon_s=60.0, max_away=2)
    lists = [[0] for _ in range(5)]
    for i, out in enumerate(lists):
        tr.add(i, out)
        out.append(1)
    tr.step()
    for i in range(5):
        tr.remove(i)
        clk.t += 1
    assert len(tr._away) == 2  # bounded: the oldest went first
    clk.t += 61
    tr.add(0, [0, 1])
    tr.remove(0)  # a new request, never had a token: nothing remembered
    tr.remove(9)  # unknown index: ignored
    tr._prune(clk.t)
    assert tr._away == {}
    assert tr.to_dict()["count"] == 0


def test_histogram_bounds_and_inf():
    h = Histogram((0.1, 1.0))
    for v in (0.1, 0.5, 3.0):
        h.observe(v)
    d = h.to_dict()
    assert d["le"] == [0.1, 1.0, "+Inf"] and d["cumulative"] == [1, 2, 3] and d["count"] == 3
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((1.0, 0.5))
    assert BUCKETS == tuple(sorted(BUCKETS))


def test_lockstep_steps_and_a_row_that_skips_one_observe_exact_gaps():
    """Rows that all get a token every step share one gap (the whole-batch
    path); a row that misses a step shows the double gap when it resumes."""
    clk = Clock()
    tr = StarvationTracker(clock=clk)
    lists = [[] for _ in range(3)]
    for i, out in enumerate(lists):
        tr.add(i, out)
    for step in range(5):
        clk.t += 0.02
        for i, out in enumerate(lists):
            if not (i == 2 and step == 2):  # row 2 gets nothing at step 2
                out.append(1)
        tr.step()
    _, d = _buckets(tr)
    # 3 rows x 4 gaps, minus row 2's missed step: 11 gaps; row 2's resume gap is 0.04.
    assert d["count"] == 11
    assert d["sum"] == pytest.approx(10 * 0.02 + 0.04)
    assert d["worst_s"] == pytest.approx(0.04)
