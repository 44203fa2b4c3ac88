"""The pure part of exact resume: merging and the continuation request."""
import pytest

from l0.contract import ModelIdentity, Record
from l0.client.resume import ResumeError, check_model, continuation_body, merge, needs_regeneration, remaining


def rec(**kw):
    base = dict(key="k-1", model=ModelIdentity("smollm2", "sha256:t"), prompt_ids=(1, 2, 3), output_ids=(7, 8),
                sampling={"temperature": 0.0, "max_tokens": 10, "min_tokens": 4, "seed": 5, "stop": ["END"],
                          "vllm_xargs": {"l0_key": "k-1", "l0_action": "stop"}})
    base.update(kw)
    return Record(**base)


def test_merge_takes_the_longer_consistent_prefix():
    assert merge([7, 8, 9], [7, 8]) == [7, 8, 9]      # client ahead of the last checkpoint
    assert merge([7], [7, 8, 9]) == [7, 8, 9]         # checkpoint ahead of what was delivered
    assert merge([], [7]) == [7] and merge([7], []) == [7]
    with pytest.raises(ResumeError, match="disagrees .* at index 1") as err:
        merge([7, 9, 9], [7, 8], key="k")
    assert err.value.token_ids == [7, 9, 9]           # nothing lost


def test_continuation_body():
    body = continuation_body(rec(), [7, 8, 9], "smollm2")
    assert body["prompt"] == [1, 2, 3, 7, 8, 9]
    assert body["max_tokens"] == 7 and body["min_tokens"] == 1
    assert body["seed"] == 5 and body["stop"] == ["END"] and body["temperature"] == 0.0
    assert body["vllm_xargs"] == {"l0_key": "k-1", "l0_action": "stop", "l0_resume_from": 3}
    assert body["stream"] and body["return_token_ids"] and body["model"] == "smollm2"
    assert remaining(rec(), [7, 8, 9]) == 7


def test_model_check_and_guided():
    check_model(rec(), "smollm2")
    with pytest.raises(ResumeError, match="written by model 'smollm2', not 'llama'"):
        check_model(rec(), "llama", [1])
    assert not needs_regeneration(rec(sampling={"temperature": 0.0, "stop_token_ids": [2]}))
    assert needs_regeneration(rec(sampling={"structured_outputs": {"json": {}}}))
    assert needs_regeneration(rec(sampling={"stop": ["\n\n"]}))    # straddles a cut: see the e2e test
    assert not needs_regeneration(rec(sampling={"stop": []})) and not needs_regeneration(rec(sampling={"stop": None}))


def test_the_text_past_a_cut_holds_back_a_split_character_as_the_stream_does():
    """``detokenize_tail`` against a stub ``/l0/detokenize`` over byte
    tokens: a token that leaves a character incomplete is held back whole,
    the space it starts with too (vLLM's stream does the same: a kept space
    came again with the character, a doubled space in a chaos run)."""
    import asyncio
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from l0.client.endpoints import ServerEndpoint
    from l0.client.options import Options

    vocab = {1: b"Arabic:", 2: b" \xd8", 3: b"\xa5", 4: b"\xd8", 5: b"\xae", 6: b" ok"}   # " \u0625", "\u062e"
    asked = []

    class Detok(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            ids = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["tokens"]
            asked.append(len(ids))
            data = json.dumps({"text": b"".join(vocab[i] for i in ids).decode("utf-8", "replace")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Detok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ep = ServerEndpoint(f"http://127.0.0.1:{srv.server_address[1]}/v1", {}, "chat", {"model": "m"}, Options(),
                            assume_l0=True)

        def tail(have, full, delivered=None):
            return asyncio.run(ep.detokenize_tail(have, full, delivered=delivered))
        assert tail([1], [1, 2], "Arabic:") == ""                    # " \xd8": held whole, its space too
        assert tail([1, 2], [1, 2, 3], "Arabic:") == " \u0625"         # the character completes: with its space
        assert tail([1, 2, 3], [1, 2, 3, 4], "Arabic: \u0625") == ""
        assert tail([1, 2, 3, 4], [1, 2, 3, 4, 5, 6], "Arabic: \u0625") == "\u062e ok"
        assert tail([1, 2, 3], [1, 2, 3, 4, 5], "Arabic: \u0625") == "\u062e"
        asked.clear()
        assert tail([1], [1, 2, 3, 4], "Arabic:") == " \u0625"         # the last token held back
        assert asked == [4, 3]                                       # one ask more for the split character
        assert tail([1], [1, 2], None) == ""                         # no delivered text: from ``have``'s
        assert tail([1], [1, 2, 3], None) == " \u0625"
    finally:
        srv.shutdown()
        srv.server_close()
