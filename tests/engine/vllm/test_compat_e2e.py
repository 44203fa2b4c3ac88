"""What a user may combine with L0, and what a client may throw at it, on real
`l0 serve` replicas (vLLM CPU build, SmolLM2).

The compatibility matrix: every vLLM feature with L0 ``stop`` on a looping
request ("Repeat the word hello 10 times." loops "hello, hello, ..." under
greedy decoding; L0 stops it at 26 tokens). Each case runs with
``l0_action`` off and stop on the same server and asserts the loop was
stopped (or why not), that the answer is otherwise the same (the stopped
answer is the off answer cut, plus the stop token), and no 500. Three
servers: the main one (prefix caching on with 32-token blocks, so the 39-token chat
prompt fills one: CPU blocks are 128 tokens by default; 256 sequences, tool parser, an API
key, checkpoints in Redis as production runs it: a password, TLS only (``rediss://``),
append-only persistence), one with prefix caching off,
one sequence at a time and chunked prefill on a 32-token budget (and a LoRA
adapter), and one with
a KV cache of 160 tokens (preemption).

Then every input fuzzed (hypothesis) against the main server: ``l0_*``
options, ``l0_key`` shapes, the ``/l0/*`` routes. Every answer is a 200 or a
4xx with a message; no 5xx, no traceback or secret in any answer or log
line, and the engine keeps serving.
"""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from services import RedisProcess, free_port, make_tls_files, settled_record

pytestmark = [pytest.mark.vllm, pytest.mark.redis]

API_KEY = "sk-l0-compat-7f3a9c"          # secrets that must never show up in an answer or a log line
REDIS_PASSWORD = "redis-pw-51d2e8"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "Repeat the word hello 10 times."}]
EOS = 2          # SmolLM2's <|im_end|>
MAX = 64
BASE = ["--dtype", "float32", "--enforce-eager", "--seed", "0"]


def _server(model, tmp, name, args, env, cache_gib="1"):
    from l0.engine.server import Server
    env = {"L0_ACTION": "stop", "VLLM_CPU_KVCACHE_SPACE": cache_gib, **env}
    return Server(model, BASE + args, env=env, log_path=tmp / f"{name}.log", port=free_port())


def zero_lora(model: str, path) -> str:
    """A rank-8 LoRA adapter on q_proj/v_proj with B = 0: served like any
    adapter, it changes no logit (no adapter for SmolLM2 can be fetched
    offline; this one tests that L0 works on LoRA requests)."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(model) / "config.json").read_text())
    hidden, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    out = {"q_proj": hidden, "v_proj": hidden // heads * kv}
    tensors = {}
    g = torch.Generator().manual_seed(0)
    for layer in range(cfg["num_hidden_layers"]):
        for name, n_out in out.items():
            pre = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{pre}.lora_A.weight"] = torch.randn(8, hidden, generator=g) * 0.01
            tensors[f"{pre}.lora_B.weight"] = torch.zeros(n_out, 8)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": list(out), "lora_dropout": 0.0,
        "bias": "none", "base_model_name_or_path": model, "task_type": "CAUSAL_LM"}))
    return str(path)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from l0.engine.checkpoint import open_store
    from l0.engine.models import prepare_smollm2

    model = str(prepare_smollm2())
    tmp = tmp_path_factory.mktemp("compat")
    redis = RedisProcess(tmp, password=REDIS_PASSWORD, tls=make_tls_files(tmp), persist=True).start()
    assert redis.url.startswith("rediss://")
    store = {"L0_CHECKPOINT_STORE": redis.url}
    servers = {
        "main": _server(model, tmp, "main", ["--max-model-len", "2048", "--max-num-seqs", "256",
                                             "--enable-prefix-caching", "--block-size", "32",
                                             "--enable-auto-tool-choice",
                                             "--tool-call-parser", "hermes", "--api-key", API_KEY], store),
        "small": _server(model, tmp, "small", ["--max-model-len", "2048", "--max-num-seqs", "1",
                                               "--no-enable-prefix-caching", "--enable-chunked-prefill",
                                               "--max-num-batched-tokens", "32", "--enable-lora",
                                               "--max-lora-rank", "8", "--lora-modules",
                                               f"zero={zero_lora(model, tmp / 'zero-lora')}"], store),
        "tiny_kv": _server(model, tmp, "tiny_kv", ["--max-model-len", "128", "--max-num-seqs", "4",
                                                   "--num-gpu-blocks-override", "5", "--block-size", "32"], store),
    }
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda s: s.start(), servers.values()))
    except BaseException:
        for s in servers.values():
            s.stop()
        redis.stop()
        raise
    yield {"model": model, "tmp": tmp, "redis": redis, "store": open_store(redis.url), **servers}
    for s in servers.values():
        s.stop()
    redis.stop()


def post(srv, path, body, headers=AUTH, timeout=300):
    return httpx.post(srv.url + path, json=body, headers=headers, timeout=timeout)


def chat(fleet, action, srv="main", key=None, **kw):
    body = {"model": fleet["model"], "messages": HELLO, "max_tokens": MAX, "temperature": 0.0,
            "return_token_ids": True, "vllm_xargs": {"l0_action": action, **({"l0_key": key} if key else {})}}
    body.update(kw)
    return post(fleet[srv], "/v1/chat/completions", body)


def ids_of(r, i=0):
    assert r.status_code == 200, r.text
    return r.json()["choices"][i]["token_ids"]


def stopped_from(off: list[int], stop: list[int]) -> bool:
    """The stopped answer is the off answer cut, plus the stop token."""
    return len(stop) < len(off) and stop[-1] == EOS and stop[:-1] == off[:len(stop) - 1]


# -- the matrix: one request pair per feature, all in flight at once on the main server

CASES = {
    "plain": {},
    "best_of": {"best_of": 2},
    "logprobs": {"logprobs": True, "top_logprobs": 2},
    "stop_string": {"stop": ["hello, hello, hello"]},
    "ignore_eos": {"ignore_eos": True},
    "ignore_eos_stop_id": {"ignore_eos": True, "stop_token_ids": [EOS]},
    "min_tokens": {"min_tokens": 40},
    "seeded": {"temperature": 0.3, "seed": 0},
    "seeded_n2": {"temperature": 0.3, "seed": 0, "n": 2},
    "regex": {"structured_outputs": {"regex": "(hello, )+hello"}},
    "grammar": {"structured_outputs": {"grammar": 'root ::= ("hello, ")+ "hello"'}},
    "choice": {"structured_outputs": {"choice": ["hello", "goodbye"]}},
    "json_object": {"response_format": {"type": "json_object"}, "max_tokens": 160,
                    "messages": [{"role": "user", "content": "List the planets of the solar system as JSON."}]},
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
for choice in ("auto", "required"):
    CASES[f"tools_{choice}"] = {"tools": TOOLS, "tool_choice": choice, "max_tokens": 96, "messages": [
        {"role": "user", "content": "What is the weather in Paris? Use the tool."}]}


@pytest.fixture(scope="module")
def matrix(fleet):
    jobs = [(name, action) for name in CASES for action in ("off", "stop")]
    with ThreadPoolExecutor(len(jobs)) as pool:
        res = list(pool.map(lambda j: chat(fleet, j[1], key=f"mx-{j[0]}-{j[1]}", **CASES[j[0]]), jobs))
    return dict(zip(jobs, res))


def record(fleet, key, finished=True):
    return settled_record(fleet["store"].get, key, ready=lambda rec: rec.finished or not finished)


def test_a_plain_loop_is_stopped_and_nothing_else_changes(fleet, matrix):
    off, stop = ids_of(matrix["plain", "off"]), ids_of(matrix["plain", "stop"])
    assert len(off) == MAX and matrix["plain", "off"].json()["choices"][0]["finish_reason"] == "length"
    assert stopped_from(off, stop) and len(stop) == 26
    assert matrix["plain", "stop"].json()["choices"][0]["finish_reason"] == "stop"
    assert [i["action"] for i in record(fleet, "mx-plain-stop").interventions] == ["stop"]


@pytest.mark.parametrize("name", ["best_of", "seeded", "regex", "grammar"])
def test_the_loop_is_stopped_under(matrix, name):
    off, stop = ids_of(matrix[name, "off"]), ids_of(matrix[name, "stop"])
    assert len(off) == MAX and stopped_from(off, stop)


def test_greedy_n_above_1_is_vllms_own_400_with_or_without_l0(fleet):
    for action in ("off", "stop"):
        r = chat(fleet, action, n=2)
        assert r.status_code == 400 and "n must be 1 when using greedy sampling" in r.json()["error"]["message"]


def test_seeded_n2_every_choice_is_stopped_or_unchanged(matrix):
    offs, stops = matrix["seeded_n2", "off"].json()["choices"], matrix["seeded_n2", "stop"].json()["choices"]
    assert len(offs) == len(stops) == 2
    for o, s in zip(sorted(offs, key=lambda c: c["index"]), sorted(stops, key=lambda c: c["index"])):
        assert s["token_ids"] == o["token_ids"] or stopped_from(o["token_ids"], s["token_ids"])
    assert any(s["finish_reason"] == "stop" and len(s["token_ids"]) < MAX for s in stops)


def test_seeded_sampling_stays_reproducible(fleet, matrix):
    again = chat(fleet, "stop", **CASES["seeded"])
    assert ids_of(again) == ids_of(matrix["seeded", "stop"])


def test_logprobs_cover_every_token_and_match_where_the_answers_agree(matrix):
    off, stop = matrix["logprobs", "off"].json()["choices"][0], matrix["logprobs", "stop"].json()["choices"][0]
    assert stopped_from(off["token_ids"], stop["token_ids"])
    assert len(stop["logprobs"]["content"]) == len(stop["token_ids"])
    n = len(stop["token_ids"]) - 1  # the forced stop token's entry is the model's own (raw) logprob
    assert [c["logprob"] for c in stop["logprobs"]["content"][:n]] == [c["logprob"] for c in off["logprobs"]["content"][:n]]
    assert all(len(c["top_logprobs"]) == 2 for c in stop["logprobs"]["content"])


def test_a_stop_string_ends_the_answer_before_l0_needs_to(matrix):
    off, stop = matrix["stop_string", "off"].json(), matrix["stop_string", "stop"].json()
    assert off["choices"][0]["message"] == stop["choices"][0]["message"]
    assert stop["choices"][0]["finish_reason"] == "stop" and len(ids_of(matrix["stop_string", "stop"])) < 26


def test_ignore_eos_without_a_stop_token_is_penalized_and_says_why(fleet, matrix):
    """No token may end the row: L0 cannot stop it, it penalizes the loop."""
    stop = ids_of(matrix["ignore_eos", "stop"])
    assert len(stop) == MAX and stop != ids_of(matrix["ignore_eos", "off"])
    first = record(fleet, "mx-ignore_eos-stop").interventions[0]
    assert (first["action"], first["requested"], first["reason"]) == ("penalize", "stop", "no_stop_token")


def test_ignore_eos_with_stop_token_ids_stops_on_that_token(matrix):
    assert stopped_from(ids_of(matrix["ignore_eos_stop_id", "off"]), ids_of(matrix["ignore_eos_stop_id", "stop"]))


def test_min_tokens_is_respected_then_the_stop_lands(fleet, matrix):
    off, stop = ids_of(matrix["min_tokens", "off"]), ids_of(matrix["min_tokens", "stop"])
    assert 40 < len(stop) < MAX and stop[-1] == EOS and stop[:25] == off[:25]
    inter = record(fleet, "mx-min_tokens-stop").interventions
    assert (inter[0]["action"], inter[0]["reason"]) == ("penalize", "min_tokens") and inter[-1]["action"] == "stop"


def test_structured_outputs_stay_valid(matrix):
    for name in ("regex", "grammar"):
        text = matrix[name, "stop"].json()["choices"][0]["message"]["content"]
        assert re.fullmatch("(hello, )+hello", text)
    assert matrix["choice", "off"].json()["choices"][0]["message"] == matrix["choice", "stop"].json()["choices"][0]["message"]
    off = matrix["json_object", "off"].json()["choices"][0]
    stop = matrix["json_object", "stop"].json()["choices"][0]
    assert off["finish_reason"] == "length"
    with pytest.raises(ValueError):
        json.loads(off["message"]["content"])       # cut at the budget: broken JSON without L0
    assert stop["finish_reason"] == "stop" and isinstance(json.loads(stop["message"]["content"]), dict)


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_tool_calls_are_unchanged(matrix, choice):
    off, stop = matrix[f"tools_{choice}", "off"].json(), matrix[f"tools_{choice}", "stop"].json()
    o, s = off["choices"][0], stop["choices"][0]
    assert (o["message"]["content"], o["finish_reason"]) == (s["message"]["content"], s["finish_reason"])
    assert [c["function"] for c in o["message"].get("tool_calls") or []] == \
           [c["function"] for c in s["message"].get("tool_calls") or []]
    if choice == "required":
        assert s["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("extra", [{"echo": True}, {"prompt_logprobs": 1}], ids=["echo", "prompt_logprobs"])
def test_completions_echo_and_prompt_logprobs(fleet, extra):
    # (With prompt_logprobs or return_token_ids, vLLM's echoed text drops the
    # prompt's first token, L0 or not: echo is checked on its own.)
    prompt = "hello, hello, hello, hello, hello,"
    out = {}
    for action in ("off", "stop"):
        r = post(fleet["main"], "/v1/completions", {
            "model": fleet["model"], "prompt": prompt, "max_tokens": MAX, "temperature": 0.0,
            "return_token_ids": "echo" not in extra, "vllm_xargs": {"l0_action": action}, **extra})
        assert r.status_code == 200, r.text
        out[action] = r.json()["choices"][0]
    assert out["off"]["finish_reason"] == "length" and out["stop"]["finish_reason"] == "stop"
    if "echo" in extra:
        assert out["stop"]["text"].startswith(prompt) and out["off"]["text"].startswith(out["stop"]["text"])
        assert len(out["stop"]["text"]) < len(out["off"]["text"])
    else:
        assert out["off"]["prompt_logprobs"] == out["stop"]["prompt_logprobs"] and out["stop"]["prompt_logprobs"]
        assert stopped_from(out["off"]["token_ids"], out["stop"]["token_ids"])


def test_streamed_usage_counts_the_stopped_answer(fleet):
    body = {"model": fleet["model"], "messages": HELLO, "max_tokens": MAX, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True}
    with httpx.stream("POST", fleet["main"].url + "/v1/chat/completions", json=body, headers=AUTH, timeout=300) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    ids = [t for e in events for c in e.get("choices") or [] for t in c.get("token_ids") or []]
    assert events[-1]["usage"]["completion_tokens"] == len(ids) == 26
    assert [c["finish_reason"] for e in events for c in e.get("choices") or [] if c["finish_reason"]] == ["stop"]


def test_prefix_caching_hits_and_changes_nothing(fleet, matrix):
    def hits():
        text = httpx.get(fleet["main"].url + "/metrics", headers=AUTH, timeout=10).text
        return sum(float(x) for x in re.findall(r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)", text, re.M))
    before = hits()
    assert ids_of(chat(fleet, "stop")) == ids_of(matrix["plain", "stop"])
    assert hits() > before


def test_a_client_abort_mid_stream_keeps_a_resumable_record_and_the_server_serves_on(fleet):
    body = {"model": fleet["model"], "messages": HELLO, "max_tokens": MAX, "temperature": 0.0, "stream": True,
            "return_token_ids": True, "vllm_xargs": {"l0_key": "mx-abort"}}
    got = []
    with httpx.stream("POST", fleet["main"].url + "/v1/chat/completions", json=body, headers=AUTH, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got += [t for c in json.loads(line[6:])["choices"] for t in c.get("token_ids") or []]
            if len(got) >= 6:
                break  # the client goes away mid-stream
    assert len(ids_of(chat(fleet, "stop"))) == 26  # serving goes on (and its step reports the removal)
    rec = record(fleet, "mx-abort", finished=False)
    # An aborted request is not finished (L0 cannot tell it from a preemption):
    # its record stays resumable, with at least what the client got.
    assert not rec.finished and rec.output_ids[:len(got)] == tuple(got) and len(rec.output_ids) < 26


def test_one_sequence_at_a_time_no_prefix_cache_chunked_prefill(fleet):
    with ThreadPoolExecutor(2) as pool:  # two requests, one slot: the second waits its turn
        off, stop = pool.map(lambda a: ids_of(chat(fleet, a, srv="small")), ("off", "stop"))
    assert len(off) == MAX and stopped_from(off, stop)


def test_a_lora_adapter_request_is_stopped_too(fleet):
    base_off = ids_of(chat(fleet, "off", srv="small"))
    lora_off, lora_stop = (ids_of(chat(fleet, a, srv="small", model="zero")) for a in ("off", "stop"))
    assert lora_off == base_off           # B = 0: the adapter changes nothing
    assert stopped_from(lora_off, lora_stop)


def test_preemption_on_a_tiny_kv_cache(fleet):
    def preemptions():
        text = httpx.get(fleet["tiny_kv"].url + "/metrics", timeout=10).text
        return sum(float(x) for x in re.findall(r"^vllm:num_preemptions_total\{[^}]*\} (\S+)", text, re.M))
    before = preemptions()
    jobs = ["off", "stop"] * 3   # 6 x ~100 tokens of KV on 128 tokens' worth: requests get preempted
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda a: ids_of(chat(fleet, a, srv="tiny_kv")), jobs))
    assert preemptions() > before
    offs, stops = got[0::2], got[1::2]
    assert all(o == offs[0] for o in offs) and all(s == stops[0] for s in stops)
    assert stopped_from(offs[0], stops[0])


# -- every input, fuzzed, against the main server -----------------------------

def _fuzz(max_examples):
    from hypothesis import HealthCheck, settings
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _values():
    from hypothesis import strategies as st
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=40),
                        st.sampled_from(["x" * 100_000, "\u202e\u0000\ud7ff", "stop", "-1", "1e309", "NaN"]))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                        max_leaves=8)


def assert_clean(r, *ok):
    """A 2xx of ``ok`` or a 4xx with a message (JSON from the app, text from
    the HTTP parser; none for HEAD); no traceback, no secret."""
    text = r.text
    assert r.status_code < 500, (r.status_code, text[:500])
    assert API_KEY not in text and REDIS_PASSWORD not in text and "Traceback" not in text
    assert not any(API_KEY in v or REDIS_PASSWORD in v for v in r.headers.values())
    if r.status_code >= 400 and r.request.method != "HEAD":
        assert text.strip(), r.status_code
        if r.headers.get("content-type", "").startswith("application/json"):
            body = r.json()
            assert "error" in body or "detail" in body, text[:300]
    elif r.status_code < 400:
        assert not ok or r.status_code in ok


def test_fuzzed_request_options_are_200_or_400(fleet):
    from hypothesis import given
    from hypothesis import strategies as st

    from l0.engine.config import KNOWN_OPTIONS

    @_fuzz(60)
    @given(xargs=st.dictionaries(st.one_of(st.sampled_from(KNOWN_OPTIONS), st.text(max_size=10)), _values(),
                                 max_size=4), stream=st.booleans())
    def check(xargs, stream):
        body = {"model": fleet["model"], "messages": HELLO, "max_tokens": 2, "temperature": 0.0,
                "stream": stream, "vllm_xargs": xargs}
        r = httpx.post(fleet["main"].url + "/v1/chat/completions", content=json.dumps(body),  # NaN, Infinity too
                       headers={**AUTH, "content-type": "application/json"}, timeout=60)
        assert_clean(r, 200)
        if r.status_code == 200 and stream:
            assert '"error"' not in r.text, r.text[:500]  # no error event after the 200
    check()


def test_fuzzed_keys_are_200_or_400(fleet):
    from hypothesis import given
    from hypothesis import strategies as st

    @_fuzz(40)
    @given(key=st.one_of(st.text(max_size=200), st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True),
                         st.integers(), st.lists(st.text(max_size=3), max_size=2)))
    def check(key):
        body = {"model": fleet["model"], "messages": HELLO, "max_tokens": 1, "vllm_xargs": {"l0_key": key}}
        r = post(fleet["main"], "/v1/chat/completions", body, timeout=60)
        assert_clean(r, 200)
        if r.status_code == 200:
            assert r.headers["x-l0-key"] == key
        else:
            assert "l0_key" in r.json()["error"]["message"]
    check()


def test_fuzzed_l0_routes_never_fail_or_leak(fleet):
    from hypothesis import given
    from hypothesis import strategies as st

    paths = st.one_of(
        st.sampled_from(["/l0/health", "/l0/status", "/l0/metrics", "/l0/detokenize", "/l0/checkpoints/mx-plain-stop",
                         "/l0/checkpoints/", "/l0/checkpoints/%00", "/l0/checkpoints/..%2F..%2Fetc",
                         "/l0/checkpoints/" + "k" * 4000, "/l0/", "/l0/checkpoints/a/b"]),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.%/", max_size=40).map("/l0/{}".format))
    auth = st.one_of(st.none(), st.just(AUTH["Authorization"]), st.text(max_size=40).map("Bearer {}".format),
                     st.sampled_from(["Basic Zm9vOmJhcg==", "Bearer", f"bearer {API_KEY}x", ""]))
    bodies = st.one_of(st.none(), st.binary(max_size=200),
                       _values().map(lambda v: json.dumps(v).encode()),
                       st.just(b'{"tokens": [' + b"1," * 300_000 + b'1]}'))

    @_fuzz(80)
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]), path=paths,
           authorization=auth, body=bodies)
    def check(method, path, authorization, body):
        headers = {"content-type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        try:
            r = httpx.request(method, fleet["main"].url + path, content=body, headers=headers, timeout=60)
        except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
            return  # the client refuses to send it
        assert_clean(r)
    check()


def test_oversized_inputs_are_refused_and_nothing_is_recorded(fleet):
    r = chat(fleet, "stop", key="k" * 1_000_000)                      # a 1 MB key attempt
    assert_clean(r) and r.status_code == 400
    r = post(fleet["main"], "/v1/completions", {"model": fleet["model"], "prompt": [5] * 100_000, "max_tokens": 4,
                                                "vllm_xargs": {"l0_key": "mx-huge-prompt"}})
    assert_clean(r) and r.status_code == 400                           # 100k tokens > max-model-len: vLLM's 400
    assert fleet["store"].get("mx-huge-prompt") is None
    r = post(fleet["main"], "/l0/detokenize", {"tokens": [1] * (1 << 20 + 1)})
    assert_clean(r) and r.status_code == 400


def test_checkpoints_cannot_be_read_without_the_api_key(fleet, matrix):
    url = fleet["main"].url + "/l0/checkpoints/mx-plain-stop"
    assert record(fleet, "mx-plain-stop").finished  # written behind the stream
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    r = httpx.get(url, headers=AUTH, timeout=10)
    assert r.status_code == 200 and r.json()["output_ids"] == ids_of(matrix["plain", "stop"])
    assert httpx.post(fleet["main"].url + "/l0/detokenize", json={"tokens": [1]}, timeout=10).status_code == 401


def test_last_the_server_still_serves_and_no_secret_reached_a_log_line(fleet):
    assert len(ids_of(chat(fleet, "stop"))) == 26
    assert httpx.get(fleet["main"].url + "/l0/health", timeout=10).status_code == 200
    for name in ("main", "small", "tiny_kv"):
        log = (fleet["tmp"] / f"{name}.log").read_text()
        assert API_KEY not in log and REDIS_PASSWORD not in log, name
        assert '" 500 ' not in log, name  # no access-log line with a 500
