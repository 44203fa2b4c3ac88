"""L0 as Triton Python-backend models (decoupled). Host glue only: the stream
logic is :mod:`l0.engine.triton.guard`; ``triton_python_backend_utils`` exists only
inside Triton's stub process and is imported in ``initialize``.

Two models, one contract for what leaves them:

* :class:`StepModel` — a step *after* the LLM in an ensemble. Triton runs it
  once per LLM response (one chunk of tokens); it keys streams by the
  ensemble's request id (or the ``l0_stream`` request parameter), passes the
  chunk on, and after a ``stop`` verdict passes nothing more for that stream.
  An ensemble step cannot end or cancel the LLM's stream: the client sees
  ``l0_stopped`` and cancels (or use the BLS model).
* :class:`BlsModel` — wraps the LLM (``llm_model`` parameter) through BLS:
  forwards the request, streams the LLM's responses through the guard, and on
  ``stop`` ends the client's stream at once with the verdict. An LLM error
  (even one sent with the final flag, which hangs a naive BLS loop on Triton
  2.51) and a silent LLM (``response_timeout_s``) end the stream with an error.

Inputs (all optional): ``token_ids`` INT64 [-1] (the newest tokens),
``text_output`` STRING [-1] (the newest text; turned into ids with the
``tokenizer`` parameter when ``token_ids`` is absent), ``l0_options`` STRING
[1] (JSON object, same names as ``vllm_xargs``); ``l0_*`` request parameters
are options too. Outputs: ``output_ids`` INT64 [-1], ``output_text`` STRING
[-1] (when text came in), ``l0_event`` STRING [1] (JSON verdict, "" when
none), ``l0_stopped`` BOOL [1].

Model parameters (config.pbtxt ``parameters``, all optional): ``config``
(an L0 YAML file), ``action`` (default stop), ``backend`` (auto), ``device``
(cpu), ``max_period_cap``, ``tokenizer`` (a tokenizer directory),
``idle_s`` (300), ``max_streams`` (10000); BLS: ``llm_model``,
``llm_outputs`` (token_ids,text_output), ``response_timeout_s`` (60).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
from typing import Any

from l0.engine.config import OptionError, ServerConfig, load_server_config
from l0.engine.triton.guard import ERR_PENALIZE, StreamGuard, StreamTable, options_json, parse_options

log = logging.getLogger("l0.triton")

ERR_NO_KEY = ("l0: this request has no id: give the ensemble request an id (gRPC request_id, HTTP \"id\") "
              "or an l0_stream parameter, so L0 can follow its stream")


# Request parameters that are not detector options: the stream key and the
# health probe (``l0 triton-probe``), which L0's models answer themselves.
_NOT_OPTIONS = ("l0_stream", "l0_probe")
PROBE_EVENT = json.dumps({"event": "l0.probe", "ok": True})


def _params(model_config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


def server_config_from(params: dict[str, str]) -> ServerConfig:
    """The L0 server config of one Triton model: ``config`` file, then the
    ``action``/``backend``/``max_period_cap`` parameters. Raises OptionError."""
    cfg = load_server_config(params.get("config") or None)
    changes: dict[str, Any] = {"action": params.get("action") or "stop"}
    if params.get("backend"):
        changes["backend"] = params["backend"]
    if params.get("max_period_cap"):
        changes["max_period_cap"] = int(params["max_period_cap"])
    cfg = dataclasses.replace(cfg, **changes).check()
    if cfg.action == "penalize":
        raise OptionError(ERR_PENALIZE)
    return cfg


class _Text:
    """Text chunks → token ids with a Hugging Face tokenizer (lazy import)."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(path)

    def ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def cut(self, text: str, ids: list[int], n: int) -> str:
        return text if n >= len(ids) else self.tok.decode(ids[:n])


class _Base:
    def initialize(self, args: dict) -> None:
        import numpy as np
        import triton_python_backend_utils as pb

        self.pb, self.np = pb, np
        self.model_config = json.loads(args["model_config"])
        self.params = _params(self.model_config)
        self.server = server_config_from(self.params)
        self.device = self.params.get("device") or "cpu"
        self.text = _Text(self.params["tokenizer"]) if self.params.get("tokenizer") else None
        classes = None
        if self.text is not None:
            from l0.engine.vocab import classes_from_tokenizer
            classes = classes_from_tokenizer(self.text.tok)
        self.classes = classes
        self.streams = StreamTable(self._new_guard, idle_s=float(self.params.get("idle_s") or 300),
                                   max_streams=int(self.params.get("max_streams") or 10000))
        log.warning("l0: Triton model %s ready (action %s)", args.get("model_name"), self.server.action)

    def _new_guard(self, opts) -> StreamGuard:
        return StreamGuard(opts, self.server.max_period_cap, self.classes, self.device, self.server.backend)

    # -- tensors ----------------------------------------------------------------
    def _input(self, request, name: str):
        t = self.pb.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def _request_params(self, request) -> dict:
        try:
            return json.loads(request.parameters() or "{}")
        except ValueError:
            return {}

    def _options(self, request, params: dict):
        """Options of a new stream: ``l0_*`` request parameters, then the
        ``l0_options`` JSON input (which wins). Raises OptionError."""
        merged = {k: v for k, v in params.items() if k.startswith("l0_") and k not in _NOT_OPTIONS}
        raw = self._input(request, "l0_options")
        if raw is not None and raw.size:
            merged.update(options_json(raw.reshape(-1)[0]))
        return parse_options(merged, self.server)

    def _chunk(self, ids_arr, text_arr) -> tuple[list[int], str | None]:
        """(token ids, text or None) of one LLM response."""
        text = None
        if text_arr is not None and text_arr.size:
            text = "".join(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                           for x in text_arr.reshape(-1))
        if ids_arr is not None:
            return [int(x) for x in ids_arr.reshape(-1)], text
        if text is not None and self.text is not None:
            return self.text.ids(text), text
        if text is not None:
            raise OptionError("l0: the LLM sent text without token_ids: set the model's tokenizer parameter")
        return [], None

    def _response(self, ids: list[int], text: str | None, event: str, stopped: bool):
        """One response: ``event`` is the ``l0_event`` JSON text ("" for none)."""
        np, pb = self.np, self.pb
        out = [pb.Tensor("output_ids", np.array(ids, dtype=np.int64)),
               pb.Tensor("l0_event", np.array([event.encode()], dtype=np.object_)),
               pb.Tensor("l0_stopped", np.array([stopped], dtype=np.bool_))]
        if text is not None:
            out.append(pb.Tensor("output_text", np.array([text.encode()], dtype=np.object_)))
        return pb.InferenceResponse(output_tensors=out)

    def _probe(self, sender) -> None:
        sender.send(self._response([], None, PROBE_EVENT, False), flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _error(self, message: str):
        return self.pb.InferenceResponse(error=self.pb.TritonError(message))

    def _guarded(self, guard: StreamGuard, ids: list[int], text: str | None):
        """The response for one LLM chunk (None: nothing left to pass)."""
        if guard.stopped:
            return None
        n, verdict = guard.feed(ids)
        event = verdict.to_json() if verdict is not None else ""
        if event:
            log.warning("%s", event)
        if text is not None and n < len(ids):
            text = self.text.cut(text, ids, n) if self.text is not None else ""
        return self._response(ids[:n], text, event, guard.stopped)


class StepModel(_Base):
    """The ensemble step (see module docstring)."""

    def execute(self, requests):
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            try:
                params = self._request_params(request)
                if params.get("l0_probe"):
                    self._probe(sender)
                    continue
                key = str(params.get("l0_stream") or request.request_id() or "")
                if not key:
                    raise OptionError(ERR_NO_KEY)
                guard = self.streams.get(key, lambda: self._options(request, params))
                ids, text = self._chunk(self._input(request, "token_ids"), self._input(request, "text_output"))
                resp = self._guarded(guard, ids, text)
            except OptionError as exc:
                sender.send(self._error(str(exc)), flags=final)
                continue
            except Exception as exc:  # never let an exception kill the stub or leave a stream open
                log.exception("l0: step failed")
                sender.send(self._error(f"l0: internal error: {exc}"), flags=final)
                continue
            if resp is None:
                sender.send(flags=final)
            else:
                sender.send(resp, flags=final)
        return None


_END = object()


class _Stop(threading.Event):
    """Set when the client's stream ended early; cancels the LLM's request
    where this Triton can (BLS ``cancel()`` exists from Triton 24.xx on, not
    in 2.51: there the LLM runs to its own end and its responses are dropped)."""

    iterator = None

    def set(self) -> None:
        super().set()
        cancel = getattr(self.iterator, "cancel", None)
        if cancel is not None:
            try:
                cancel()
            except Exception as exc:
                log.warning("l0: cancelling the LLM request failed: %s", exc)


class BlsModel(_Base):
    """The BLS wrapper (see module docstring)."""

    def initialize(self, args: dict) -> None:
        super().initialize(args)
        self.llm = self.params.get("llm_model") or ""
        if not self.llm:
            raise OptionError("l0: the BLS model needs the llm_model parameter (the LLM model's name)")
        self.llm_outputs = [x.strip() for x in (self.params.get("llm_outputs") or "token_ids,text_output").split(",")
                            if x.strip()]
        self.timeout_s = float(self.params.get("response_timeout_s") or 60)
        self.own_inputs = {"l0_options"}

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True,
                             name="l0-bls").start()
        return None

    def _inner_request(self, request, params: dict):
        pb = self.pb
        inputs = [t for t in request.inputs() if t.name() not in self.own_inputs]
        fwd = {k: v for k, v in params.items()
               if not k.startswith("l0_") and isinstance(v, (bool, int, str))}
        return pb.InferenceRequest(model_name=self.llm, inputs=inputs, requested_output_names=self.llm_outputs,
                                   request_id=request.request_id() or "", parameters=fwd)

    def _serve(self, request) -> None:
        pb = self.pb
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        sender = request.get_response_sender()
        try:
            params = self._request_params(request)
            if params.get("l0_probe"):
                self._probe(sender)
                return
            guard = self._new_guard(self._options(request, params))
            inner = self._inner_request(request, params)
        except OptionError as exc:
            sender.send(self._error(str(exc)), flags=final)
            return
        except Exception as exc:
            log.exception("l0: BLS request failed")
            sender.send(self._error(f"l0: internal error: {exc}"), flags=final)
            return
        q: queue.Queue = queue.Queue()
        stop_reading = _Stop()

        def read():
            # Its own thread: on Triton 2.51 this iterator never ends after an
            # LLM error sent with the final flag; the serving side stops waiting.
            try:
                responses = inner.exec(decoupled=True)
                stop_reading.iterator = responses
                for resp in responses:
                    if stop_reading.is_set():
                        break  # stopped: the rest of the LLM's stream is dropped
                    q.put(resp)
                    if resp.has_error():
                        break
            except Exception as exc:
                q.put(exc)
            q.put(_END)

        reader = threading.Thread(target=read, daemon=True, name="l0-bls-reader")
        reader.start()
        try:
            self._pump(request, sender, guard, q, stop_reading)
        except Exception as exc:  # the client always gets an end
            log.exception("l0: BLS stream failed")
            sender.send(self._error(f"l0: internal error: {exc}"), flags=final)

    def _pump(self, request, sender, guard: StreamGuard, q: queue.Queue, stop_reading: "_Stop") -> None:
        pb = self.pb
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        while True:
            if request.is_cancelled():
                stop_reading.set()
                sender.send(flags=final)
                return
            try:
                item = q.get(timeout=self.timeout_s)
            except queue.Empty:
                stop_reading.set()
                # (On Triton 2.51 an LLM error sent with the final flag never
                # reaches a BLS caller: this timeout is what ends such a stream.)
                sender.send(self._error(f"l0: the LLM ({self.llm}) sent nothing for {self.timeout_s:g} s; "
                                        "see its log"), flags=final)
                return
            if item is _END:
                sender.send(flags=final)
                return
            if isinstance(item, Exception):
                sender.send(self._error(f"l0: the LLM ({self.llm}) failed: {item}"), flags=final)
                return
            if item.has_error():
                sender.send(self._error(item.error().message()), flags=final)
                return
            ids_t = pb.get_output_tensor_by_name(item, "token_ids")
            text_t = pb.get_output_tensor_by_name(item, "text_output")
            if ids_t is None and text_t is None:
                continue  # the LLM's empty final response: _END follows
            ids, text = self._chunk(None if ids_t is None else ids_t.as_numpy(),
                                    None if text_t is None else text_t.as_numpy())
            resp = self._guarded(guard, ids, text)
            if guard.stopped:
                stop_reading.set()
                sender.send(resp, flags=final)
                return
            sender.send(resp)
