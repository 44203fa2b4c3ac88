"""HostTokens: each slot's new token from the host's live output lists (the
V1 runner's), on the fast path (every list grew by one) and off it."""
from __future__ import annotations

from l0.engine.host_tokens import HostTokens


def gather(h: HostTokens, B: int):
    replayed = []
    toks = h.gather(B, lambda slot, toks: replayed.append((slot, list(toks))))
    return toks, replayed


def test_one_token_a_step_dense_and_sparse():
    h = HostTokens(6)
    a, b = [], []
    h.add(0, a)
    h.add(1, b)
    assert gather(h, 2) == ([-1, -1], [])
    a.append(5)
    b.append(7)
    assert gather(h, 2) == ([5, 7], [])
    a.append(6)
    b.append(8)
    assert gather(h, 3) == ([6, 8, -1], [])
    c = []
    h.add(4, c)  # slots 0, 1, 4: not dense
    a.append(1)
    b.append(2)
    c.append(3)
    assert gather(h, 5) == ([1, 2, -1, -1, 3], [])


def test_async_placeholder_is_taken_once_known():
    h = HostTokens(2)
    a = []
    h.add(0, a)
    a.append(-1)  # vLLM's async scheduling: the token is not known yet
    assert gather(h, 1) == ([-1], [])
    a[-1] = 9
    assert gather(h, 1) == ([9], [])
    a.append(10)
    assert gather(h, 1) == ([10], [])


def test_readded_with_output_is_replayed_then_steps():
    h = HostTokens(2)
    a = [1, 2, 3]  # preempted and re-added with its output so far
    h.add(1, a)
    assert gather(h, 2) == ([-1, 3], [(1, [1, 2])])
    a.append(4)
    assert gather(h, 2) == ([-1, 4], [])


def test_moves_and_swaps_keep_counts_and_rows_beyond_the_batch_wait():
    h = HostTokens(4)
    a, b = [1], [2]
    h.add(0, a)
    h.add(1, b)
    assert gather(h, 2) == ([1, 2], [])
    h.move(0, 1, swap=True)
    a.append(3)
    b.append(4)
    assert gather(h, 2) == ([4, 3], [])
    h.move(1, 3, swap=False)  # a's list to slot 3, beyond a batch of 2
    a.append(5)
    b.append(6)
    assert gather(h, 2) == ([6, -1], [])
    assert gather(h, 4) == ([-1, -1, -1, 5], [])
    h.remove(0)
    a.append(7)
    b.append(8)
    assert gather(h, 4) == ([-1, -1, -1, 7], [])


def test_a_list_that_shrank_gives_no_token_until_it_grows_past_its_count():
    """A list rewritten shorter (not something the V1 runner does to a live
    list) yields nothing until it is longer than the tokens already taken."""
    h = HostTokens(1)
    a = [1, 2]
    h.add(0, a)
    assert gather(h, 1) == ([2], [(0, [1])])
    del a[1:]
    assert gather(h, 1) == ([-1], [])
    a.append(4)
    a.append(5)
    assert gather(h, 1) == ([5], [])
