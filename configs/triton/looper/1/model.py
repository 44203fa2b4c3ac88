"""A small deterministic "looping LLM" (Triton Python backend, decoupled) for
L0's tests and the example repository. It is not a language model: from the
prompt ids it generates one token per response, reproducibly.

Inputs: ``input_ids`` INT64 [-1] (the prompt), optional ``max_tokens`` INT32
[1] (default 64), optional ``mode`` STRING [1]:

* ``normal``: pseudo-random ids in [1000, 30000) (never a loop L0 would see);
* ``loop``: 16 such ids, then a cycle of ``period`` ids (STRING "loop:7" sets
  the period, default 5) until ``max_tokens`` — a runaway;
* ``error:N``: N normal tokens, then an error response *with* the final flag
  (the pattern that hangs a naive BLS loop).

Outputs per response: ``token_ids`` INT64 [1] and ``text_output`` STRING [1]
(" w<id>"). Checks cancellation before every token and logs how a stream
ended ("looper: <request id> cancelled after N tokens" / "finished N").
Parameter ``delay_ms`` (config) paces the tokens like a real decode step.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def _lcg(seed):
    x = seed & 0xFFFFFFFF
    while True:
        x = (1103515245 * x + 12345) & 0x7FFFFFFF
        yield 1000 + x % 29000


def _scalar(request, name, default):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    v = t.as_numpy().reshape(-1)[0]
    return v.decode() if isinstance(v, bytes) else v


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.delay_s = float(params.get("delay_ms", "0") or 0) / 1000.0

    def execute(self, requests):
        # Decoupled: each request streams from its own thread, so streams run
        # concurrently (as in a real LLM backend) and execute returns at once.
        import threading

        for request in requests:
            threading.Thread(target=self._generate, args=(request,), daemon=True).start()
        return None

    def _generate(self, request):
        import time

        sender = request.get_response_sender()
        rid = request.request_id() or "-"
        try:
            prompt = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
            max_tokens = int(_scalar(request, "max_tokens", 64))
            mode = str(_scalar(request, "mode", "normal"))
        except Exception as exc:  # a malformed request gets an error, not a dead stub
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"looper: bad request: {exc}")),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        gen = _lcg(int(prompt.sum()) * 31 + len(prompt))
        name, _, arg = mode.partition(":")
        cycle = [next(gen) for _ in range(int(arg or 5))] if name == "loop" else None
        prefix = [next(gen) for _ in range(16)] if name == "loop" else None
        error_at = int(arg or 0) if name == "error" else -1
        sent = 0
        outcome = "finished"
        for i in range(max_tokens):
            if request.is_cancelled():
                outcome = "cancelled"
                break
            if i == error_at:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"looper: simulated failure after {i} tokens")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                outcome = "failed"
                break
            if cycle is not None:
                tok = prefix[i] if i < 16 else cycle[(i - 16) % len(cycle)]
            else:
                tok = next(gen)
            if self.delay_s:
                time.sleep(self.delay_s)
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("token_ids", np.array([tok], dtype=np.int64)),
                pb_utils.Tensor("text_output", np.array([f" w{tok}".encode()], dtype=np.object_))]))
            sent += 1
        if outcome != "failed":
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        print(f"looper: {rid} {outcome} after {sent} tokens", flush=True)
