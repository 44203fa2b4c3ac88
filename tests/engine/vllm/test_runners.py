"""L0 under both of vLLM's model runners.

* vLLM's own loaders (V1: ``vllm.v1.sample.logits_processor``; V2:
  ``vllm.v1.worker.gpu.sample.logits_processor.loader``) accept
  ``l0.vllm:L0LogitsProcessor`` and the installed entry point, and each
  builds the adapter for its runner; the V2 frontend validator (what vLLM
  builds at start-up on GPUs) rejects a bad ``l0_*`` value.
* The V2 adapter, driven through vLLM's V2 interface classes on CPU tensors
  (slots recycled, rows shuffled every step, preemption, chunked prefill,
  resumed requests), equals the V1 adapter step by step: the same logits,
  the same interventions at the same token, the same checkpoint records.
"""
from __future__ import annotations

import json
import random
import time

import pytest
import torch

from runners import EOS, Req, Scenario, V1Runner, V2Runner, fake_vllm_config, v2_state

pytestmark = pytest.mark.vllm

FQCN = "l0.vllm:L0LogitsProcessor"
V = 64
SLOTS = 4
MAX_LEN = 256


def sp(max_tokens=40, xargs=None, **kw):
    from vllm import SamplingParams
    x = {"l0_min_span": 1, "l0_near_min_repeats": 0, "l0_max_period": 8}
    x.update(xargs or {})
    p = SamplingParams(max_tokens=max_tokens, extra_args=x, **kw)
    p.update_from_generation_config({}, eos_token_id=EOS)
    return p


# -- the loaders ---------------------------------------------------------------

def test_the_v1_loader_accepts_the_class_and_the_entry_point():
    from vllm.v1.sample.logits_processor import LogitsProcessor, _load_custom_logitsprocs
    from l0.vllm import L0EntryPoint, L0LogitsProcessor
    classes = _load_custom_logitsprocs([FQCN])
    assert L0EntryPoint in classes and L0LogitsProcessor in classes  # the entry point first, then the name
    assert all(issubclass(c, LogitsProcessor) for c in classes)


def test_the_v2_loader_accepts_the_class_and_the_entry_point():
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs
    from l0.vllm import L0EntryPoint, L0LogitsProcessor
    classes = _load_v2_logitsprocs([FQCN])
    assert classes[-1] is L0LogitsProcessor and L0EntryPoint in classes
    assert all(issubclass(c, LogitsProcessor) for c in classes)


def test_the_v2_frontend_validator_builds_and_rejects_a_bad_option(monkeypatch):
    """What vLLM's frontend builds at start-up under V2 (``input_processor``):
    with L0 merely installed (entry point only) and with L0 named."""
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator
    from l0.engine.vllm import host
    host.server_config.cache_clear()
    monkeypatch.delenv("L0_CONFIG", raising=False)
    for named in (None, [FQCN]):
        validator = build_custom_logits_processors_params_validator(named)
        validator(sp())  # a good request passes
        with pytest.raises(VLLMValidationError, match="l0_max_period=100000 is out of range"):
            validator(sp(xargs={"l0_max_period": 100000}))
        with pytest.raises(VLLMValidationError, match="l0_bogus"):
            validator(sp(xargs={"l0_bogus": 1}))


def _v2_state():
    return v2_state(SLOTS, V, MAX_LEN)


@pytest.fixture
def l0_env(monkeypatch, tmp_path):
    monkeypatch.setenv("L0_ACTION", "stop")
    monkeypatch.setenv("L0_CHECKPOINT_STORE", "off")
    monkeypatch.delenv("L0_CONFIG", raising=False)
    from l0.engine.vllm import host
    host.server_config.cache_clear()
    yield tmp_path
    host.server_config.cache_clear()


def test_each_runner_builds_its_own_adapter(l0_env):
    """vLLM's V2 builder (``build_custom_logits_processors``) and the V1 way
    of building (``cls(vllm_config, device, is_pin_memory)``) each get their
    runner's adapter; the entry point stands down where the name is given."""
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors
    from l0.vllm import L0EntryPoint, L0LogitsProcessor
    from l0.engine.vllm.v1_processor import L0V1EntryPoint, L0V1Processor
    from l0.engine.vllm.v2_processor import L0V2EntryPoint, L0V2Processor

    cfg = fake_vllm_config(SLOTS, V, named=[FQCN])
    built = build_custom_logits_processors(cfg, _v2_state(), False, [FQCN])
    assert [type(p) for p in built] == [L0V2EntryPoint, L0V2Processor]
    entry, named = built
    assert not entry.enabled and entry.core is None  # stands down: L0 runs once
    assert named.enabled and named.core is not None and named.runner == "v2"

    v1 = L0LogitsProcessor(cfg, torch.device("cpu"), False)
    assert type(v1) is L0V1Processor and v1.core is not None
    assert type(L0EntryPoint(cfg, torch.device("cpu"), False)) is L0V1EntryPoint
    alone = fake_vllm_config(SLOTS, V)  # L0 merely installed: the entry point runs
    assert L0EntryPoint(alone, _v2_state()).enabled


def test_a_v2_batch_without_l0_requests_skips_apply(l0_env):
    from l0.vllm import L0LogitsProcessor
    proc = L0LogitsProcessor(fake_vllm_config(SLOTS, V), _v2_state())
    assert proc.add_request(0, sp(xargs={"l0_action": "off"})) is False
    assert proc.add_request(1, sp()) is True
    assert proc.add_request(1, sp(xargs={"l0_action": "off"})) is False  # the slot recycled: re-initialised


# -- V1 and V2, step by step -----------------------------------------------------

def scenario_requests(seed: int) -> list[Req]:
    """Loops of period 1-4 after a random lead, every action, min_tokens,
    ignore_eos with and without a stop token, EOS masked by a "grammar",
    keyed and resumed requests, chunked prefill."""
    rng = random.Random(seed)
    reqs = []
    for i in range(12):
        lead = [rng.randrange(3, V) for _ in range(rng.randrange(0, 8))]
        cycle = [rng.randrange(3, V) for _ in range(rng.randrange(1, 5))]
        script = lead + cycle * 40
        action = rng.choice(["stop", "stop", "penalize", "observe", "off"])
        xargs = {"l0_action": action}
        kw = {}
        if rng.random() < 0.5:
            xargs["l0_key"] = f"k{seed}-{i}"
        prompt = [rng.randrange(3, V) for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.3:  # resumed: its first tokens come back in the prompt
            n = rng.randrange(1, 6)
            prompt += script[:n]
            script = script[n:]
            xargs["l0_resume_from"] = n
        if rng.random() < 0.3:
            kw["min_tokens"] = rng.randrange(1, 12)
        if rng.random() < 0.2:
            kw["ignore_eos"] = True
            if rng.random() < 0.5:
                kw["stop_token_ids"] = [rng.randrange(3, V)]
        params = sp(max_tokens=rng.randrange(10, 48), xargs=xargs, **kw)
        reqs.append(Req(f"r{i}", prompt, params, script, chunks=rng.choice([0, 0, 1, 2]),
                        mask_eos=rng.choice([0, 0, 8])))
    return reqs


def _events_by_step(proc, sink: list, step_of: list) -> None:
    """Record the core's intervention events with the step they came in."""
    inner = proc.core.on_event

    def on_event(event):
        sink.append((step_of[0], json.dumps(event, sort_keys=True)))
        inner(event)
    proc.core.on_event = on_event


def run_both(reqs: list[Req], seed: int, tmp_path, monkeypatch, every: int = 4, vocab: int = V,
             tokenizer: str = "/nonexistent"):
    """The same requests on the V1 runner, then on the V2 runner."""
    from l0.engine.checkpoint import open_store
    from l0.engine.vllm import host
    from l0.engine.vllm.logits_processor import L0LogitsProcessor
    results = {}
    for runner in ("v1", "v2"):
        store = f"sqlite://{tmp_path}/{runner}.sqlite3"
        (tmp_path / f"{runner}.yaml").write_text(f"l0:\n  action: stop\n  checkpoint:\n    every: {every}\n")
        monkeypatch.setenv("L0_CONFIG", str(tmp_path / f"{runner}.yaml"))
        monkeypatch.setenv("L0_CHECKPOINT_STORE", store)
        monkeypatch.delenv("L0_ACTION", raising=False)
        host.server_config.cache_clear()
        cfg = fake_vllm_config(SLOTS, vocab, tokenizer=tokenizer, max_model_len=MAX_LEN)
        rng = random.Random(seed + 1)
        if runner == "v1":
            drv = V1Runner(L0LogitsProcessor(cfg, torch.device("cpu"), False), SLOTS, rng)
        else:
            drv = V2Runner(L0LogitsProcessor, cfg, SLOTS, vocab, MAX_LEN, rng)
        events, step_of, rows = [], [0], []
        _events_by_step(drv.proc, events, step_of)

        def on_step(step, got, rows=rows, step_of=step_of):
            rows.append(got)
            step_of[0] = step + 1

        done = Scenario(reqs, SLOTS, vocab, seed).run(drv, on_step)
        results[runner] = dict(proc=drv.proc, rows=rows, events=events, done=done, store=open_store(store))
    host.server_config.cache_clear()
    return results


@pytest.mark.parametrize("seed", range(6))
def test_v2_equals_v1_step_by_step(seed, tmp_path, monkeypatch):
    reqs = scenario_requests(seed)
    assert_runners_agree(reqs, run_both(reqs, seed, tmp_path, monkeypatch))


def json_requests(tok, seed: int) -> list[Req]:
    """SmolLM2's tokenizer: JSON answers (a schema, json_object) that loop,
    closed on the loop or at the budget; prompts that ask for 25 items (the
    near-loop thresholds read the prompt's text, which V2 copies to the host)."""
    from vllm.sampling_params import StructuredOutputsParams
    rng = random.Random(seed)
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object",
              "properties": {"name": {"type": "string"}}, "required": ["name"]}}}, "required": ["items"]}
    record = '{"name": "Pluto"}, '
    reqs = []
    for i in range(8):
        kind = i % 4
        xargs = {"l0_action": rng.choice(["stop", "stop", "penalize"]), "l0_key": f"j{seed}-{i}"}
        if kind == 0:  # a JSON schema whose records repeat
            so = StructuredOutputsParams(json=schema)
            script = enc('{"items": [' + record * 60)
            prompt = enc("List the planets as JSON.")
        elif kind == 1:  # json_object, closed at a tight budget
            so = StructuredOutputsParams(json_object=True)
            script = enc('{"a": {"b": ["' + "word " * 80)
            prompt = enc("Answer in JSON.")
        else:  # plain text near-loops, with and without an item count in the prompt
            so = None
            script = enc("1. The planet Mars is red and cold.\n" + "2. The planet Mars is red and cold too.\n" * 30)
            prompt = enc("Write 25 records about Mars." if kind == 2 else "Write about Mars.")
            xargs.update(l0_near_min_repeats=4, l0_near_min_span=24)
        params = sp(max_tokens=rng.randrange(24, 120), xargs=xargs, structured_outputs=so)
        reqs.append(Req(f"j{i}", prompt, params, script, chunks=rng.choice([0, 1]),
                        mask_eos=1000 if so is not None else 0))
    return reqs


@pytest.mark.smollm2
@pytest.mark.parametrize("seed", range(2))
def test_v2_equals_v1_on_json_and_prompt_counts(seed, tmp_path, monkeypatch):
    from transformers import AutoTokenizer
    from l0.engine.models import prepare_smollm2
    path = str(prepare_smollm2())
    tok = AutoTokenizer.from_pretrained(path)
    reqs = json_requests(tok, seed)
    r = run_both(reqs, seed, tmp_path, monkeypatch, vocab=len(tok), tokenizer=path)
    assert_runners_agree(reqs, r)
    actions = {json.loads(e)["action"] for _, e in r["v1"]["events"]}
    assert "close" in actions  # close mode ran (on a loop or at the budget) under both runners


def assert_runners_agree(reqs, r) -> None:
    a, b = r["v1"], r["v2"]
    try:
        assert len(a["rows"]) == len(b["rows"])
        for step, (ra, rb) in enumerate(zip(a["rows"], b["rows"])):
            assert ra.keys() == rb.keys(), f"step {step}"
            for rid in ra:
                assert torch.equal(ra[rid], rb[rid]), f"step {step}, request {rid}"
        assert sorted(a["events"]) == sorted(b["events"]) and a["events"]
        assert a["done"] == b["done"] and len(a["done"]) == len(reqs)
        # Checkpoints: the same records, the V2 ones finished by slot reuse or
        # by the finisher thread (it reads the device; polled, never read once).
        keys = [r_.params.extra_args["l0_key"] for r_ in reqs if "l0_key" in r_.params.extra_args]
        assert keys
        a["proc"].ckpt.writer.flush()
        want = {k: a["store"].get(k) for k in keys}
        deadline = time.monotonic() + 20
        while True:
            b["proc"].ckpt.writer.flush()
            got = {k: b["store"].get(k) for k in keys}
            same = all(_record(got[k]) == _record(want[k]) for k in keys)
            if same or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for k in keys:
            assert _record(got[k]) == _record(want[k]), k
        assert any(w.finished for w in want.values())
    finally:
        for x in (a, b):
            x["proc"].ckpt.close()


def _record(rec):
    return None if rec is None else (rec.prompt_ids, rec.output_ids, rec.finished, rec.finish_reason,
                                     json.dumps(rec.sampling, sort_keys=True),
                                     json.dumps(rec.interventions, sort_keys=True))


# -- speculative decoding under V2 ---------------------------------------------

def _spec_proc(k: int, monkeypatch):
    from types import SimpleNamespace
    from l0.engine.vllm import L0LogitsProcessor, host
    monkeypatch.setenv("L0_ACTION", "stop")
    monkeypatch.setenv("L0_CHECKPOINT_STORE", "off")
    monkeypatch.delenv("L0_CONFIG", raising=False)
    host.server_config.cache_clear()
    cfg = fake_vllm_config(SLOTS, V)
    cfg.speculative_config = SimpleNamespace(num_speculative_tokens=k) if k else None
    state = _v2_state()
    return L0LogitsProcessor(cfg, state), state


def test_speculative_decoding_acts_on_first_rows_and_feeds_every_accepted_token(monkeypatch):
    """Two draft tokens per step: a request owns three rows. L0 acts on each
    request's first row only (its committed history ends there) and leaves
    draft rows as they were; when a step accepts several tokens they are all
    fed, in order, so its first row equals what a runner without drafts
    gives after the same tokens, one per step."""
    import numpy as np
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext
    spec, spec_state = _spec_proc(2, monkeypatch)
    plain, plain_state = _spec_proc(0, monkeypatch)
    script = [9, 7, 8, 7, 8, 7, 8, 7, 8, 7, 8]
    for proc, state in ((spec, spec_state), (plain, plain_state)):
        state.prompt_len.np[1] = state.prefill_len.np[1] = 2
        state.all_token_ids.gpu[1, :2] = torch.tensor([5, 6], dtype=torch.int32)
        state.total_len.gpu[1] = 2
        assert proc.add_request(1, sp(xargs={"l0_min_span": 1}))
        proc.apply_staged_writes()

    def ctx(rows, local):
        idx = torch.tensor(rows, dtype=torch.int32)
        return LogitsContext(expanded_idx_mapping=idx, idx_mapping=torch.tensor([1], dtype=torch.int32),
                             idx_mapping_np=np.array([1], dtype=np.int32),
                             expanded_local_pos=torch.tensor(local, dtype=torch.int32),
                             input_ids=torch.zeros(len(rows), dtype=torch.int64),
                             pos=torch.zeros(len(rows), dtype=torch.int64),
                             seq_lens_upper_bound_np=np.zeros(1, dtype=np.int32))

    def commit(state, toks):
        n = int(state.total_len.gpu[1])
        state.all_token_ids.gpu[1, n:n + len(toks)] = torch.tensor(toks, dtype=torch.int32)
        state.total_len.gpu[1] = n + len(toks)

    fed = 0
    plain_rows = [plain.apply(torch.zeros(1, V), ctx([1], [0]))[0].clone()]
    spec.apply(torch.zeros(3, V), ctx([1, 1, 1], [0, 1, 2]))
    for accepted in (1, 3, 2, 1, 3, 1):
        toks = script[fed:fed + accepted]
        fed += accepted
        for t in toks:  # one token per step without drafts
            commit(plain_state, [t])
            plain_rows.append(plain.apply(torch.zeros(1, V), ctx([1], [0]))[0].clone())
        commit(spec_state, toks)
        base = torch.arange(3 * V, dtype=torch.float32).view(3, V)
        out = spec.apply(base.clone(), ctx([1, 1, 1], [0, 1, 2]))
        assert torch.equal(out[1:], base[1:])  # draft rows left alone
        assert torch.equal(out[0] - base[0], plain_rows[-1]), f"after {fed} tokens"
    assert fed == len(script) and torch.isfinite(plain_rows[-1]).sum() == 1  # the loop is stopped


def test_a_vllm_without_the_v2_interface_gets_the_v1_class():
    """vLLM before Model Runner V2's interface: importing L0 still works, and
    the class is a V1 processor only (checked in a fresh interpreter)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['vllm.v1.worker.gpu.sample.logits_processor.interface'] = None\n"
            "from vllm.v1.sample.logits_processor import LogitsProcessor\n"
            "from l0.vllm import L0LogitsProcessor, L0EntryPoint\n"
            "assert L0LogitsProcessor.__bases__ == (LogitsProcessor,), L0LogitsProcessor.__bases__\n"
            "assert issubclass(L0EntryPoint, LogitsProcessor)\n"
            "print('v1 only')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "v1 only" in proc.stdout, proc.stderr[-2000:]
