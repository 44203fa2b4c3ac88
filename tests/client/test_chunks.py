"""l0.client.chunks: reading and making chunks, logprobs and usage carried across
the chat and completions forms (a checkpoint continuation is a completions
request whatever the caller asked)."""
from l0.client import chunks as ck

COMPLETION_LP = {"text_offset": [10, 11], "token_logprobs": [-0.5, -1.25], "tokens": ["\n", "é"],
                 "top_logprobs": [{"\n": -0.5, "<|im_start|>": -2.0}, {"é": -1.25}]}
CHAT_ENTRIES = [
    {"token": "\n", "logprob": -0.5, "bytes": [10],
     "top_logprobs": [{"token": "\n", "logprob": -0.5, "bytes": [10]},
                      {"token": "<|im_start|>", "logprob": -2.0, "bytes": list(b"<|im_start|>")}]},
    {"token": "é", "logprob": -1.25, "bytes": [195, 169],
     "top_logprobs": [{"token": "é", "logprob": -1.25, "bytes": [195, 169]}]},
]


def test_completion_logprobs_read_in_the_chat_form_and_back():
    entries = ck.logprob_entries(COMPLETION_LP)
    assert list(entries) == CHAT_ENTRIES
    assert ck.logprob_entries({"content": CHAT_ENTRIES}) == tuple(CHAT_ENTRIES)
    assert ck.completion_logprobs(entries, 10) == COMPLETION_LP
    assert ck.logprob_entries(None) is None and ck.logprob_entries({"content": None}) is None


def test_parts_carry_logprobs_and_restamped_chunks_give_them_back():
    d = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "text": "\né", "token_ids": [198, 7], "finish_reason": None,
                      "logprobs": COMPLETION_LP}]}
    p = ck.parts(d)
    assert p.logprobs == tuple(CHAT_ENTRIES) and p.token_ids == (198, 7)
    chat = ck.chat_chunk({"id": "x"}, p.text, list(p.token_ids), None, sdk=False, logprobs=p.logprobs)
    assert chat["choices"][0]["logprobs"] == {"content": CHAT_ENTRIES}
    comp = ck.completion_chunk({"id": "x"}, p.text, list(p.token_ids), None, sdk=False, logprobs=p.logprobs,
                               text_offset=10)
    assert comp["choices"][0]["logprobs"] == COMPLETION_LP
    assert ck.chat_chunk({}, "a", None, None, sdk=False)["choices"][0]["logprobs"] is None


def test_a_cut_chunk_keeps_the_logprobs_of_its_kept_tokens():
    chat = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "\né"}, "token_ids": [198, 7], "finish_reason": None,
                         "logprobs": {"content": CHAT_ENTRIES}}]}
    cut = ck.with_token_ids(chat, [7], "é")
    assert cut["choices"][0]["logprobs"] == {"content": CHAT_ENTRIES[1:]}
    assert ck.with_token_ids(chat, [], "")["choices"][0]["logprobs"] == {"content": []}
    comp = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "\né", "token_ids": [198, 7], "finish_reason": None,
                         "logprobs": COMPLETION_LP}]}
    lp = ck.with_token_ids(comp, [7], "é")["choices"][0]["logprobs"]
    assert (lp["tokens"], lp["text_offset"]) == (["é"], [11])


def test_a_usage_chunk_is_restamped_with_no_choices():
    u = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    d = ck.chat_chunk({"id": "x"}, "", None, None, sdk=False, usage=u, usage_only=True)
    assert d["choices"] == [] and d["usage"] == u
    assert ck.parts(d).usage == u and ck.parts(d).role_only


def test_tool_call_pieces_and_reasoning_survive_a_restamp():
    call = [{"index": 0, "id": "call-1", "type": "function", "function": {"name": "get_weather"}}]
    d = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": None, "tool_calls": call}, "token_ids": [5],
                      "finish_reason": None}]}
    p = ck.parts(d)
    assert p.tool_calls and p.delta_extra == {"tool_calls": call} and not p.role_only
    again = ck.chat_chunk({"id": "x"}, p.text, list(p.token_ids), None, sdk=False, delta_extra=p.delta_extra)
    assert again["choices"][0]["delta"] == {"tool_calls": call}
    thinking = {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}, "finish_reason": None}]}
    p = ck.parts(thinking)
    assert not p.role_only and p.delta_extra == {"reasoning_content": "hmm"}   # no ids: still not a role chunk
    assert ck.parts({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": []}}]}).role_only
