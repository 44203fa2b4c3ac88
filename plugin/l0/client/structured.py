"""``l0.structured(client, schema, ...)`` (this module: ``l0.client.structured``): a chat answer as a validated, typed
object.

    person = await l0.structured(client, Person, model=MODEL, messages=[...])

The request asks the server for structured output (``response_format``
``json_schema``, which vLLM enforces with a grammar) and streams through the
hardened client (``l0.wrap``): a broken stream is resumed (token for token
against L0 servers). The answer is then parsed and validated:

1. valid: returned (``how``: ``first_try``; ``resumed`` when the stream broke
   and was resumed; ``closed`` when L0 on the server closed the JSON at the
   budget or on a loop — its verdict says so);
2. invalid or truncated (a budget cut mid-JSON on a server without L0):
   repaired with `json_repair <https://pypi.org/project/json-repair/>`_ in its
   schema mode (``repaired``) — a well-kept repairer rather than our own;
3. still invalid: asked again with the validation error added to the
   caller's last user message (``reasked``), up to ``attempts`` requests in all (default: the wrapped
   client's ``Retry.attempts``).

Every step is a :class:`~l0.client.events.StructuredStep` event (with the stream's
own events in between) on the wrapped client's callbacks and log, and in
:attr:`StructuredResult.events`.

``schema``: a Pydantic model class (the result is an instance), or a JSON
schema as a dict (the result is the parsed JSON, validated with
``jsonschema``). ``json_repair``, ``pydantic`` and ``jsonschema`` are the
``l0[structured]`` extra, imported on first use.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from l0.client import events as ev
from l0.client.retry import ModelFailure

# The re-ask goes into the caller's last user message rather than after the
# bad answer: small models shown their own answer repeat it (SmolLM2 did, 3
# times in 3), told the requirement up front they meet it.
REASK = "\n\nA previous answer was rejected: {error}. Make sure the answer meets this."


class StructuredFailed(ModelFailure):
    """Every request's answer stayed invalid after repair. ``errors``: one
    per request; ``text``: the last answer."""

    reason = "structured"

    def __init__(self, errors: list[str], text: str) -> None:
        self.errors, self.text = errors, text
        super().__init__(f"l0.structured: no valid answer in {len(errors)} request(s); last error: "
                         f"{errors[-1] if errors else '?'}")


@dataclass
class StructuredResult:
    value: Any                      # the model instance (or the validated JSON)
    text: str                       # the answer the value came from (before repair)
    how: str                        # first_try | resumed | closed | repaired | reasked
    requests: int                   # chat requests made (1 + re-asks)
    repaired: bool = False
    finish_reason: str | None = None
    verdict: dict | None = None     # what L0 on the server did (L0 endpoints)
    events: list = field(default_factory=list)


class _Schema:
    """A Pydantic model class or a JSON-schema dict: its JSON schema, and
    validation (raises ValueError with a readable message)."""

    def __init__(self, schema: Any, name: str | None) -> None:
        self.model = None
        if isinstance(schema, dict):
            self.json_schema = schema
            self.name = name or str(schema.get("title") or "answer")
        elif isinstance(schema, type) and hasattr(schema, "model_json_schema") and hasattr(schema, "model_validate"):
            self.model = schema
            self.json_schema = schema.model_json_schema()
            self.name = name or schema.__name__
        else:
            raise TypeError(f"l0.structured: schema must be a Pydantic model class or a JSON schema dict, "
                            f"not {type(schema).__name__}")
        self.name = re.sub(r"[^a-zA-Z0-9_-]", "_", self.name)[:64] or "answer"
        if self.model is None:
            import jsonschema

            jsonschema.validators.validator_for(self.json_schema).check_schema(self.json_schema)

    def validate(self, obj: Any) -> Any:
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate(obj)
            except ValidationError as exc:
                raise ValueError(_pydantic_error(exc)) from None
        import jsonschema

        try:
            jsonschema.validate(obj, self.json_schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "$"
            raise ValueError(f"at {where}: {exc.message}") from None
        return obj

    def response_format(self, strict: bool | None = None) -> dict:
        """The request's ``response_format`` (``json_schema``); ``strict``
        only when given."""
        spec = {"name": self.name, "schema": self.json_schema}
        if strict is not None:
            spec["strict"] = strict
        return {"type": "json_schema", "json_schema": spec}

    def repair_target(self) -> Any:
        return self.model if self.model is not None else self.json_schema


def _pydantic_error(exc: Any) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(p) for p in e.get("loc", ())) or "$"
        parts.append(f"{where}: {e.get('msg')}")
    return "; ".join(parts)


def parse(text: str) -> Any:
    """The JSON in an answer: the whole text, or the body of a fenced code
    block. Raises ValueError (json's message and position)."""
    s = text.strip()
    m = re.match(r"^```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", s, re.S)
    if m:
        s = m.group(1)
    try:
        return json.loads(s)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
                         f"(char {exc.pos} of {len(s)})") from None


def repair(text: str, schema: _Schema) -> Any:
    """json_repair in schema mode; raises ValueError when it can't."""
    import json_repair

    try:
        return json_repair.loads(text, schema=schema.repair_target())
    except Exception as exc:  # noqa: BLE001 - json_repair raises ValueError and friends
        raise ValueError(f"json_repair: {exc}") from None


async def structured(client: Any, schema: Any, *, messages: list | None = None, model: str | None = None,
                     attempts: int | None = None, repair_json: bool = True, reask: bool = True,
                     name: str | None = None, detail: bool = False, verdict: bool = True,
                     **params: Any) -> Any:
    """Ask ``client`` (``l0.wrap(AsyncOpenAI(...))`` or a plain
    ``AsyncOpenAI``, wrapped with defaults) for an answer of ``schema``.

    ``messages``/``model`` and any other ``chat.completions.create``
    parameter (``max_tokens``, ``temperature``, ``extra_body``, ...) pass
    through; ``response_format`` is set from the schema. Returns the
    validated value, or a :class:`StructuredResult` with ``detail=True``.
    ``verdict``: against an L0 server, read what it did (one record fetch)
    to tell ``closed`` answers apart. Raises :class:`StructuredFailed` when
    no answer could be made valid, TypeError for a bad ``schema``, and the
    stream's own error when the transport gives up."""
    from l0.client.wrap import WrappedClient, wrap

    if messages is None:
        raise TypeError("l0.structured: messages= is required")
    if "stream" in params or "response_format" in params:
        raise TypeError("l0.structured sets stream and response_format itself")
    spec = _Schema(schema, name)
    wrapped = client if isinstance(client, WrappedClient) else wrap(client)
    opts = wrapped._options
    limit = attempts if attempts is not None else opts.retry.attempts
    if limit < 1:
        raise ValueError("l0.structured: attempts must be >= 1")
    events: list = []
    stream_id = ""

    def step(name_: str, **kw: Any) -> None:
        e = ev.StructuredStep(stream_id=stream_id, ts=opts.clock(), step=name_, **kw)
        events.append(e)
        if opts.log is not None:
            opts.log.event(e)
        opts.callbacks(e)

    response_format = spec.response_format(strict=True)
    convo = list(messages)
    errors: list[str] = []
    text = ""
    for request in range(1, limit + 1):
        if model is not None:
            params["model"] = model
        stream = await wrapped.chat.completions.create(messages=convo, stream=True,
                                                       response_format=response_format, **params)
        stream_id = stream.session.stream_id
        step("attempt", attempt=request, how="first" if request == 1 else "reask")
        try:
            async for _ in stream:
                pass
        finally:
            events.extend(stream.session.events)
        session = stream.session
        text = session.received.text
        finish = session.finish_reason
        seen = None
        if verdict and session.endpoint is not None and getattr(session.endpoint, "l0", False):
            try:
                seen = await stream.verdict()
            except Exception:  # noqa: BLE001 - the verdict only labels the answer
                seen = None
        try:
            value = spec.validate(parse(text))
        except ValueError as exc:
            error = str(exc)
        else:
            how = ("reasked" if request > 1 else
                   "closed" if seen and any(i.get("action") == "close" for i in seen.get("interventions") or ()) else
                   "resumed" if any(e.type == "resume" for e in session.events) else "first_try")
            step("valid", attempt=request, how=how, finish_reason=finish)
            return _result(detail, value, text, how, request, False, finish, seen, events)
        step("invalid", attempt=request, error=error, finish_reason=finish)
        errors.append(error)
        if repair_json:
            try:
                value = spec.validate(repair(text, spec))
            except ValueError as exc:
                step("invalid", attempt=request, how="repair", error=str(exc))
            else:
                step("repaired", attempt=request, how="repaired", finish_reason=finish)
                step("valid", attempt=request, how="repaired", finish_reason=finish)
                return _result(detail, value, text, "repaired", request, True, finish, seen, events)
        if not reask or request == limit:
            break
        step("reask", attempt=request, error=error)
        convo = reask_messages(messages, error)
    raise StructuredFailed(errors, text)


def structured_sync(client: Any, schema: Any, **kw: Any) -> Any:
    """:func:`structured` for synchronous code: ``client`` is
    ``l0.wrap(openai.OpenAI(...))`` (its loop thread runs the call) or a
    plain ``openai.OpenAI`` (wrapped for this call, then closed)."""
    from l0.client.sync import SyncWrappedClient
    from l0.client.wrap import wrap

    owned = not isinstance(client, SyncWrappedClient)
    wrapped = wrap(client) if owned else client
    if not isinstance(wrapped, SyncWrappedClient):
        raise TypeError("l0.structured_sync takes an openai.OpenAI client or l0.wrap(openai.OpenAI(...)); "
                        "use `await l0.structured(...)` with an AsyncOpenAI")
    try:
        return wrapped._loop.run(structured(wrapped._inner, schema, **kw))
    finally:
        if owned:
            wrapped.close()


def reask_messages(messages: list, error: str) -> list:
    """``messages`` with the validation error added to the last user
    message (a new user message when the last is not a plain-text user
    one)."""
    out = [dict(m) if isinstance(m, dict) else m for m in messages]
    note = REASK.format(error=error)
    last = out[-1] if out else None
    if isinstance(last, dict) and last.get("role") == "user" and isinstance(last.get("content"), str):
        last["content"] = last["content"] + note
    else:
        out.append({"role": "user", "content": note.strip()})
    return out


def _result(detail: bool, value: Any, text: str, how: str, requests: int, repaired: bool,
            finish: str | None, seen: dict | None, events: list) -> Any:
    if not detail:
        return value
    return StructuredResult(value=value, text=text, how=how, requests=requests, repaired=repaired,
                            finish_reason=finish, verdict=seen, events=events)


__all__ = ["structured", "structured_sync", "StructuredResult", "StructuredFailed", "parse", "repair"]
