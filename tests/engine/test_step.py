"""The engine-agnostic step core (:class:`l0.engine.step.StepCore`) driven directly with
plain tensors: the persistent-batch sequences the vLLM adapter's tests use,
the grammar contract (never unmask), and a scripted differential scenario that
runs the same batch on two cores and compares every step's logits and every
intervention. On the CPU it pits the torch backend against the fused C kernel;
on a GPU (marker ``gpu``) the CUDA core against the CPU core, in float32 and
bfloat16, at real vocabulary sizes, under ``torch.cuda.set_sync_debug_mode("error")``
on a non-default stream."""
from __future__ import annotations

import contextlib
import functools
import random
from dataclasses import dataclass, field

import pytest
import torch

from l0.engine import jsonstate
from l0.engine.config import DetectorParams, RequestOptions
from l0.engine.step import StepCore

V = 16
EOS = 2
PARAMS = DetectorParams(min_span=1, near_min_repeats=0, max_period=8)


def opts(action="stop", penalty=10.0, key=None, resume_from=0, params=PARAMS):
    return RequestOptions(action=action, params=params, key=key, penalty=penalty, resume_from=resume_from)


@pytest.fixture
def core():
    events = []
    c = StepCore(4, max_period=8, device="cpu", backend="torch", on_event=events.append)
    c.events = events
    return c


def step(core, rows):
    return core.step(torch.zeros(rows, V))


def only(row, tok=EOS):
    return torch.isfinite(row).nonzero().flatten().tolist() == [tok]


# -- the sequences of tests/engine/vllm/test_logits_processor.py, without vLLM --------

def test_stop_allows_only_eos_after_min_repeats(core):
    out = []
    core.add(0, opts(key="a"), out, prompt_ids=[5, 6], stop_token=EOS)
    for tok in [7, 8, 7, 8, 7]:
        out.append(tok)
        assert torch.isfinite(step(core, 1)).all()
    out.append(8)  # third copy of (7, 8) complete
    assert only(step(core, 1)[0])
    assert core.events == [{"event": "l0.intervention", "key": "a", "kind": "loop", "period": 2,
                            "token_index": 6, "action": "stop"}]


def test_min_tokens_defers_stop_and_penalizes_meanwhile(core):
    out = []
    core.add(0, opts(), out, prompt_ids=[5], stop_token=EOS, min_tokens=8)
    for tok in [7, 8, 7, 8, 7, 8]:
        out.append(tok)
        logits = step(core, 1)
    assert torch.isfinite(logits).all()
    assert logits[0, 7] == -10.0  # the token continuing the cycle is pushed down
    out += [7, 8]
    core.step(torch.zeros(1, V))  # both new tokens replayed (a multi-token step)
    out.append(7)
    assert only(step(core, 1)[0])
    first, second = core.events
    assert first["action"] == "penalize" and first["requested"] == "stop" and first["reason"] == "min_tokens"
    assert second["action"] == "stop" and second["token_index"] == 8 and "reason" not in second


def test_no_stop_token_penalizes(core):
    a, b = [], []
    core.add(0, opts(), a, prompt_ids=[5], stop_token=9)
    core.add(1, opts(), b, prompt_ids=[5], stop_token=-1)
    for tok in [7, 7, 7]:
        a.append(tok)
        b.append(tok)
        logits = step(core, 2)
    assert only(logits[0], 9)
    assert torch.isfinite(logits[1]).all() and logits[1, 7] == -10.0
    assert [e.get("reason") for e in core.events] == [None, "no_stop_token"]


def test_masked_stop_token_is_never_forced(core):
    """A grammar forbids EOS here: the stop falls back to penalize, no masked
    token becomes sampleable, the row keeps its finite logits; the stop lands
    on the first step the grammar allows EOS."""
    out = [7, 7]
    core.add(0, opts(), out, prompt_ids=[5], stop_token=EOS, constrained=True)
    core.step(torch.zeros(1, V))
    out.append(7)
    logits = torch.zeros(1, V)
    logits[0, EOS] = float("-inf")
    logits[0, 11:] = float("-inf")
    before = logits.clone()
    row = core.step(logits)[0]
    assert torch.equal(torch.isfinite(row), torch.isfinite(before[0]))  # nothing unmasked, nothing masked
    assert row[7] == -10.0
    assert core.events[-1] == {"event": "l0.intervention", "key": None, "kind": "loop", "period": 1,
                               "token_index": 3, "action": "penalize", "requested": "stop", "reason": "grammar"}
    out.append(8)
    logits = torch.zeros(1, V)
    logits[0, 11:] = float("-inf")
    assert only(core.step(logits)[0])  # EOS allowed again: the latched stop lands
    assert core.events[-1]["action"] == "stop" and len(core.events) == 2


def test_a_row_whose_only_token_is_the_loop_token_keeps_it(core):
    out = [7, 7]
    core.add(0, opts(action="penalize"), out, stop_token=EOS)
    core.step(torch.zeros(1, V))
    out.append(7)
    logits = torch.full((1, V), float("-inf"))
    logits[0, 7] = 1.0  # a grammar allows nothing else
    row = core.step(logits)[0]
    assert only(row, 7) and row[7] == -9.0


def test_swap_and_move_follow_requests(core):
    a, b = [], []
    core.add(0, opts(), a, prompt_ids=[1], stop_token=EOS)
    core.add(1, opts(action="observe"), b, prompt_ids=[1], stop_token=EOS)
    a += [7, 8, 7, 8, 7]
    b += [3, 4, 5, 6, 3]
    core.step(torch.zeros(2, V))
    core.move(0, 1, swap=True)  # a now in row 1
    a.append(8)
    b.append(11)
    logits = core.step(torch.zeros(2, V))
    assert only(logits[1]) and torch.isfinite(logits[0]).all()
    core.remove(0)
    core.move(1, 0, swap=False)  # b gone, a -> row 0
    a.append(EOS)
    assert only(core.step(torch.zeros(1, V))[0])


def test_preempted_request_readded_with_output_is_replayed(core):
    out = [7, 8, 7, 8, 7]
    core.add(0, opts(), out, prompt_ids=[1], stop_token=EOS)
    assert torch.isfinite(core.step(torch.zeros(1, V))).all()
    core.remove(0)
    out.append(8)
    core.add(0, opts(), out, prompt_ids=[1], stop_token=EOS)  # re-added with its 6 tokens
    assert only(core.step(torch.zeros(1, V))[0])


def test_prefill_steps_change_nothing(core):
    out = []
    core.add(0, opts(), out, prompt_ids=list(range(10)), stop_token=EOS)
    for _ in range(3):
        assert torch.equal(core.step(torch.zeros(1, V)), torch.zeros(1, V))
    assert core.position(0) == 0


def test_off_requests_are_untouched(core):
    out = []
    core.add(0, opts(action="off"), out, stop_token=EOS)
    for tok in [7] * 10:
        out.append(tok)
        assert torch.equal(step(core, 1), torch.zeros(1, V))
    assert core.rows == {}


def test_resumed_request_is_primed(core):
    out = []
    core.add(0, opts(resume_from=4), out, prompt_ids=[5, 6, 7, 8, 7, 8], stop_token=EOS)
    out.append(7)
    assert torch.isfinite(step(core, 1)).all()
    out.append(8)  # third copy of (7, 8): four of its tokens came from the prompt
    assert only(step(core, 1)[0])
    assert core.events[-1]["token_index"] == 6


def test_bad_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown detect backend"):
        StepCore(2, max_period=8, backend="tpu")


# -- scripted differential scenario -------------------------------------------

VOCABS = (49152, 152064)


@dataclass
class _Req:
    opts: RequestOptions
    stream: list[int]
    stop: int
    min_tokens: int
    constrained: bool
    prompt: list[int]
    json: bool = False
    max_tokens: int = -1
    out: list[int] = field(default_factory=list)


def scenario(seed: int, slots: int, vocab: int, steps: int):
    """A batch script: per step, the host ops to apply (add/remove/move/swap)
    and, per request, the tokens its stream would produce. Requests loop at
    periods 1..20, write random text, blank runs, or near-loops with numbers;
    actions, min_tokens, stop tokens and grammar masks vary."""
    rng = random.Random(seed)
    eos = vocab - 5

    def stream():
        kind = rng.choice(["loop", "loop", "random", "blank", "near", "late_loop"])
        head = [rng.randrange(100, vocab - 10) for _ in range(rng.randint(0, 30))]
        if kind == "random":
            return head + [rng.randrange(100, vocab - 10) for _ in range(steps)]
        if kind == "blank":
            return head + [rng.choice([10, 11]) for _ in range(steps)]
        unit = [rng.randrange(100, vocab - 10) for _ in range(rng.randint(1, 20))]
        if kind == "near":
            body = []
            for i in range(steps):
                body += [20 + i % 10] + unit  # ids 20..29 are numbers
            return head + body
        if kind == "late_loop":
            head += [rng.randrange(100, vocab - 10) for _ in range(60)]
        return head + unit * (steps // len(unit) + 2)

    def request():
        action = rng.choice(["stop", "stop", "penalize", "observe", "off"])
        params = DetectorParams(min_period=1, max_period=32, min_repeats=3, min_span=rng.choice([1, 12, 24]),
                                near_threshold=0.8, near_min_repeats=3, near_min_span=24,
                                near_min_content=0.1, echo_ngram=0, max_blank_run=rng.choice([0, 8]))
        n_resume = rng.choice([0, 0, 0, 5])
        s = stream()
        prompt = [rng.randrange(100, vocab - 10) for _ in range(rng.randint(1, 8))] + s[:n_resume]
        stop = rng.choice([eos, eos, eos, -1, vocab - 7])
        constrained = rng.random() < 0.5
        json = constrained and rng.random() < 0.7
        if json:
            # A JSON answer: an object opened, then the stream's tokens remapped
            # onto neutral pieces (text, numbers, commas), so loops stay loops
            # and the tracker keeps following.
            s = [_json_id("{")] + [t - t % len(_JSON_PIECES) + _NEUTRAL[t % len(_NEUTRAL)] for t in s]
        return _Req(RequestOptions(action, params, f"r{rng.randrange(10**6)}", rng.choice([5.0, 10.0]),
                                   n_resume, close_at_budget=rng.random() < 0.8), s[n_resume:], stop,
                    rng.choice([0, 10, 40, 80]), constrained, prompt, json=json,
                    max_tokens=rng.choice([-1, 30, 60, 200]))

    plan = []
    live = set()
    for t in range(steps):
        ops = []
        free = [i for i in range(slots) if i not in live]
        if free and (t == 0 or rng.random() < 0.15):
            for i in rng.sample(free, k=min(len(free), 1 if t else slots - 2)):
                ops.append(("add", i, request()))
                live.add(i)
        if live and rng.random() < 0.05:
            i = rng.choice(sorted(live))
            ops.append(("remove", i, None))
            live.discard(i)
        if len(live) >= 2 and rng.random() < 0.08:
            a, b = rng.sample(sorted(live), 2)
            ops.append(("swap", a, b))
        free = [i for i in range(slots) if i not in live]
        if live and free and rng.random() < 0.05:
            a = rng.choice(sorted(live))
            b = rng.choice(free)
            ops.append(("move", a, b))
            live.discard(a)
            live.add(b)
        plan.append(ops)
    return plan, eos


def _logits(gen: torch.Generator, rows: int, vocab: int, masks: list[tuple[int, int, bool]]):
    """Random float32 logits (CPU) with grammar-like masks: for (row, stop, eos_masked)
    half the vocabulary is -inf, and the stop token too when eos_masked."""
    x = torch.randn(rows, vocab, generator=gen)
    for row, stop, masked in masks:
        x[row, ::2] = float("-inf")
        x[row, stop] = float("-inf") if masked else 0.5
    return x


def run_scenario(core: StepCore, plan, eos: int, vocab: int, dtype: torch.dtype, seed: int,
                 device: torch.device, checked=contextlib.nullcontext, side_stream=None):
    """Drive one core through the plan. Returns (per-step logits on the CPU,
    events). Tokens come from each request's stream, except that a row whose
    logits leave only its stop token finite finishes (removed next step), as
    an engine would sample it. ``checked`` wraps every core call (sync debug)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    reqs: dict[int, _Req] = {}
    outs, finished = [], []
    for t, ops in enumerate(plan):
        ops = [("remove", i, None) for i in finished] + ops
        finished = []
        calls = []  # the core calls, in the order the host made its changes
        for op, a, b in ops:
            if op == "add":
                req = _Req(**{**b.__dict__, "out": []})
                reqs[a] = req
                calls.append(("add", a, req))
                continue
            calls.append((op, a, b))
            if op == "remove":
                reqs.pop(a, None)
            elif op == "swap":
                ra, rb = reqs.pop(a, None), reqs.pop(b, None)
                if ra is not None:
                    reqs[b] = ra
                if rb is not None:
                    reqs[a] = rb
            elif op == "move":
                ra = reqs.pop(a, None)
                reqs.pop(b, None)
                if ra is not None:
                    reqs[b] = ra
        for index, req in reqs.items():
            if len(req.out) < len(req.stream) and not (t % 7 == 3 and index % 3 == 0):  # some rows idle
                req.out.append(req.stream[len(req.out)])
        rows = max(reqs, default=-1) + 1
        if rows == 0:
            outs.append(None)
            continue
        masks = [(i, r.stop if r.stop >= 0 else eos, rng.random() < 0.5) for i, r in reqs.items() if r.constrained]
        host = _logits(gen, rows, vocab, masks).to(dtype)
        x = host.to(device)
        stream_ctx = torch.cuda.stream(side_stream) if side_stream is not None else contextlib.nullcontext()
        with stream_ctx:
            if side_stream is not None:
                side_stream.wait_stream(torch.cuda.default_stream(device))
            with checked():
                for op, a, b in calls:
                    if op == "add":
                        core.add(a, b.opts, b.out, prompt_ids=b.prompt, stop_token=b.stop,
                                 min_tokens=b.min_tokens, constrained=b.constrained, json=b.json,
                                 max_tokens=b.max_tokens)
                    elif op == "remove":
                        core.remove(a)
                    else:
                        core.move(a, b, swap=op == "swap")
                y = core.step(x)
        if side_stream is not None:
            side_stream.synchronize()
        y = y.cpu()
        outs.append(y)
        for index, req in reqs.items():
            if req.stop >= 0 and index < rows:
                fin = torch.isfinite(y[index])
                if int(fin.sum()) == 1 and bool(fin[req.stop]):
                    finished.append(index)
    core.flush()
    return outs


def _events_core(n, device, backend, vocab):
    events = []
    core = StepCore(n, max_period=32, device=device, backend=backend, on_event=events.append,
                    classes=_classes(), json=json_tables(vocab), close_margin=6)
    return core, events


_JSON_PIECES = ['{', '}', '[', ']', '"', ',', ':', ' ', 'ab', '12', '\\', '"}', '},{"', '"]', '}]}', '{"k":',
                '"x\\"', ', "', 'null', ']]', '[[']


_NEUTRAL = [_JSON_PIECES.index(p) for p in (" ", "ab", "12", ",", ":", "null")]


def _json_id(piece: str) -> int:
    return 100 * len(_JSON_PIECES) + _JSON_PIECES.index(piece)


@functools.cache
def json_tables(vocab: int) -> jsonstate.JsonTables:
    """Synthetic token texts: JSON pieces spread over the vocabulary (ids 100+
    cycle through them), so scripted streams move the JSON tracker around."""
    texts = ["" if i < 100 else _JSON_PIECES[i % len(_JSON_PIECES)] for i in range(vocab)]
    return jsonstate.tables_from_texts(texts)


def _classes():
    from l0.engine.vocab import TokenClasses
    # ids 10, 11 blank; 20..29 numbers; ids >= 100 content (tables padded by their last entry).
    return TokenClasses(content=[i >= 100 for i in range(101)], blank=[i in (10, 11) for i in range(101)] ,
                        number=[20 <= i < 30 for i in range(101)])


def compare(plan, eos, vocab, dtype, seed, a: tuple, b: tuple, slots: int, **b_kwargs):
    """Run the plan on core a=(device, backend) and core b; assert identical
    logits every step and identical interventions."""
    ca, ea = _events_core(slots, *a, vocab)
    cb, eb = _events_core(slots, *b, vocab)
    got_a = run_scenario(ca, plan, eos, vocab, dtype, seed, torch.device(a[0]))
    got_b = run_scenario(cb, plan, eos, vocab, dtype, seed, torch.device(b[0]), **b_kwargs)
    for t, (x, y) in enumerate(zip(got_a, got_b)):
        if x is None or y is None:
            assert x is None and y is None, f"step {t}"
            continue
        assert x.dtype == y.dtype == dtype
        assert torch.equal(x, y), f"step {t}: logits differ in rows " \
            f"{sorted(set((x != y).nonzero()[:, 0].tolist()))}"
    assert ea == eb
    return ea


def test_scenario_torch_equals_cpu_kernel_on_the_cpu():
    from l0.engine.ops import detect_cpu
    if not detect_cpu.available():
        pytest.skip("no C compiler: the cpu kernel can't be built")
    events = []
    for seed in (1, 6):
        plan, eos = scenario(seed, slots=12, vocab=600, steps=150)
        events += compare(plan, eos, 600, torch.float32, seed, ("cpu", "torch"), ("cpu", "cpu"), slots=12)
    kinds = {(e["kind"], e["action"], e.get("reason")) for e in events}
    # The scenarios reach every path: stops, penalties, grammar and min_tokens
    # fallbacks, JSON closes on a loop and at the budget, closed stops.
    assert {("loop", "stop", None), ("loop", "penalize", None)} <= kinds, kinds
    assert any(e.get("reason") == "grammar" for e in events), kinds
    assert any(e.get("reason") == "min_tokens" for e in events), kinds
    assert {"loop", "budget"} <= {e.get("reason") for e in events if e["action"] == "close"}, kinds
    assert any(e.get("closed") for e in events), kinds


@contextlib.contextmanager
def sync_errors():
    """Any host<->device synchronisation inside raises (torch's sync debug mode)."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("backend,dtype,vocab", [
    ("cuda", torch.float32, 49152), ("cuda", torch.bfloat16, 49152), ("cuda", torch.float32, 152064),
    ("cuda", torch.bfloat16, 152064), ("torch", torch.float32, 152064), ("torch", torch.bfloat16, 49152)],
    ids=lambda v: {torch.float32: "f32", torch.bfloat16: "bf16"}.get(v, str(v)))
def test_scenario_cuda_equals_cpu(backend, dtype, vocab):
    """The CUDA core makes the same decisions and writes bit-identical logits
    as the CPU core, with no host sync in any core call, on a side stream."""
    plan, eos = scenario(2, slots=16, vocab=vocab, steps=120)
    events = compare(plan, eos, vocab, dtype, 2, ("cpu", "torch"), ("cuda", backend), slots=16,
                     checked=sync_errors, side_stream=torch.cuda.Stream())
    assert any(e["action"] == "stop" for e in events)


@pytest.mark.gpu
def test_sync_debug_mode_catches_a_sync():
    """The check above is not vacuous: a host read inside it raises."""
    x = torch.ones(4, device="cuda")
    with pytest.raises(RuntimeError, match="synchroniz"):
        with sync_errors():
            x.sum().item()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "torch"])
def test_launches_are_ordered_on_the_current_stream(backend):
    """On a side stream, each step's tokens and logits are written only after a
    long device sleep. A launch (CuPy's, or a copy) on any other stream would
    run before the data lands and read stale values; the results match a CPU
    core exactly, so everything ran in the side stream's order."""
    S, vocab, T = 8, 4096, 40
    dev = torch.device("cuda")
    ev_gpu, ev_cpu = [], []
    gpu = StepCore(S, max_period=16, device=dev, backend=backend, on_event=ev_gpu.append)
    cpu = StepCore(S, max_period=16, device="cpu", backend="torch", on_event=ev_cpu.append)
    outs = [[] for _ in range(S)]
    outs_c = [[] for _ in range(S)]
    prm = DetectorParams(min_period=1, max_period=16, min_repeats=3, min_span=1, near_min_repeats=0,
                         echo_ngram=0)
    for s in range(S):
        gpu.add(s, opts(action=["stop", "penalize"][s % 2], params=prm), outs[s], stop_token=3)
        cpu.add(s, opts(action=["stop", "penalize"][s % 2], params=prm), outs_c[s], stop_token=3)
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(T, S, vocab, generator=gen)
    src_dev = src.to(dev)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    results = []
    with torch.cuda.stream(side):
        buf = torch.empty(S, vocab, device=dev)
        for t in range(T):
            for s in range(S):
                outs[s].append(100 + t % (s + 1))  # row s loops with period s + 1
            torch.cuda._sleep(2_000_000)  # ~1 ms of device time before the logits land
            buf.copy_(src_dev[t])
            results.append(gpu.step(buf).clone())
    side.synchronize()
    for t in range(T):
        for s in range(S):
            outs_c[s].append(100 + t % (s + 1))
        want = cpu.step(src[t].clone())
        assert torch.equal(results[t].cpu(), want), f"step {t}"
    gpu.flush()
    assert ev_gpu == ev_cpu and ev_cpu


# -- rows in any order, tokens on the device (vLLM's Model Runner V2) -----------

def rows_scenario(core, device, dtype, vocab, seed, steps=80, slots=12, max_len=256, checked=None,
                  side_stream=None, feed_by_slots=True):
    """Requests in recycled slots of a ``[slots, max_len]`` token buffer on
    ``device`` (as Model Runner V2 keeps them), rows shuffled every step.
    ``feed_by_slots``: drive ``step_rows`` with :class:`l0.engine.slot_tokens.SlotTokens`
    (the V2 way); else drive ``step`` with live lists, rows = slots (the V1
    way, the reference). Returns each step's logits per request id, and the
    number of requests stopped."""
    from l0.engine.slot_tokens import SlotTokens
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(slots, max_len, dtype=torch.int32, device=device)
    total = torch.zeros(slots, dtype=torch.int32, device=device)
    feed = SlotTokens(core.num_slots, 1, device)
    spare = torch.tensor(core.num_slots - 1, dtype=torch.int64, device=device)
    free, running, outs, stopped, n = list(range(slots)), {}, [], 0, 0
    checked = checked or contextlib.nullcontext
    for t in range(steps):
        calls = []
        while free and rng.random() < 0.6:
            slot = free.pop(rng.randrange(len(free)))
            cycle = [rng.randrange(100, vocab) for _ in range(rng.randrange(1, 4))]
            lead = [rng.randrange(100, vocab) for _ in range(rng.randrange(0, 6))]
            prompt = [rng.randrange(100, vocab) for _ in range(rng.randrange(1, 5))]
            action = rng.choice(["stop", "stop", "penalize", "observe"])
            req = dict(rid=n, stream=lead + cycle * 30, out=[], prompt=prompt, slot=slot, opts=opts(action=action),
                       min_tokens=rng.choice([0, 0, 5]))
            n += 1
            running[slot] = req
            ids[slot, :len(prompt)] = torch.tensor(prompt, dtype=torch.int32)
            total[slot] = len(prompt)
            calls.append(req)
        if not running:
            outs.append({})
            continue
        order = list(running)
        rng.shuffle(order)
        logits = torch.randn(len(order), vocab, generator=gen).to(dtype).to(device)
        row_slot = torch.tensor(order, dtype=torch.int64).to(device)
        stream_ctx = torch.cuda.stream(side_stream) if side_stream is not None else contextlib.nullcontext()
        with stream_ctx:
            if side_stream is not None:
                side_stream.wait_stream(torch.cuda.default_stream(device))
            with checked():
                for req in calls:
                    slot = req["slot"]
                    if feed_by_slots:
                        core.add(slot, req["opts"], None, prefix=ids[slot, :0].to(torch.int64), stop_token=EOS,
                                 min_tokens=req["min_tokens"])
                        feed.follow(slot, len(req["prompt"]))
                    else:
                        core.add(slot, req["opts"], req["out"], prompt_ids=req["prompt"], stop_token=EOS,
                                 min_tokens=req["min_tokens"])
                if feed_by_slots:
                    y = core.step_rows(logits, feed(ids, total), row_slot, order)
                else:
                    by_slot = torch.zeros(core.num_slots - 1, vocab, dtype=dtype, device=device)
                    by_slot[row_slot] = logits
                    y = core.step(by_slot)[row_slot]
        if side_stream is not None:
            side_stream.synchronize()
        y = y.float().cpu()
        outs.append({running[s]["rid"]: y[i] for i, s in enumerate(order)})
        for i, slot in enumerate(order):  # "sample": the script, or the only token left
            req = running[slot]
            fin = torch.isfinite(y[i])
            tok = EOS if int(fin.sum()) == 1 and bool(fin[EOS]) else req["stream"][len(req["out"]) % len(req["stream"])]
            req["out"].append(tok)
            ids[slot, int(total[slot])] = tok
            total[slot] += 1
            if tok == EOS or len(req["out"]) >= 60 or rng.random() < 0.02:
                stopped += tok == EOS
                del running[slot]
                free.append(slot)
                if feed_by_slots:
                    feed.drop(slot)
                core.remove(slot)
    core.flush()
    return outs, stopped


def _rows_core(device, backend, vocab, slots=12):
    events = []
    return StepCore(slots + 1, max_period=16, device=device, backend=backend, on_event=events.append), events


def _same_rows(a, b):
    assert len(a) == len(b)
    for t, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys(), f"step {t}"
        for rid in x:
            assert torch.equal(x[rid], y[rid]), f"step {t}, request {rid}"


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_rows_in_any_order_equal_rows_as_slots(backend):
    """step_rows fed by SlotTokens (rows shuffled, tokens read from the slot
    buffer) gives every request the logits step gives it with live lists."""
    if backend == "cpu":
        from l0.engine.ops import detect_cpu
        if not detect_cpu.available():
            pytest.skip("no C compiler: the cpu kernel can't be built")
    for seed in (3, 4):
        ca, ea = _rows_core("cpu", backend, 300)
        cb, eb = _rows_core("cpu", backend, 300)
        a, stopped = rows_scenario(ca, "cpu", torch.float32, 300, seed, feed_by_slots=False)
        b, _ = rows_scenario(cb, "cpu", torch.float32, 300, seed, feed_by_slots=True)
        _same_rows(a, b)
        assert stopped > 0 and sorted(map(str, ea)) == sorted(map(str, eb))


@pytest.mark.gpu
@pytest.mark.parametrize("backend,dtype", [("cuda", torch.float32), ("torch", torch.float32)])
def test_rows_scenario_cuda_equals_cpu(backend, dtype):
    """The V2 way on CUDA (tokens read on the device, rows gathered to slots)
    equals the CPU core, with no host sync in any core call, on a side stream."""
    vocab = 152064
    ca, ea = _rows_core("cpu", "torch", vocab)
    cb, eb = _rows_core("cuda", backend, vocab)
    a, stopped = rows_scenario(ca, "cpu", dtype, vocab, 5)
    b, _ = rows_scenario(cb, torch.device("cuda"), dtype, vocab, 5, checked=sync_errors,
                         side_stream=torch.cuda.Stream())
    _same_rows(a, b)
    assert stopped > 0 and ea == eb
