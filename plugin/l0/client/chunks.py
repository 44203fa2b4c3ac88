"""Reading and making streamed chunks: the OpenAI SDK's pydantic objects
(``ChatCompletionChunk``, ``Completion``), their JSON dicts, or plain strings
(``l0.run`` takes any of them). Pure logic; ``openai`` is imported only to
rebuild SDK objects, and only when it is installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Parts:
    text: str = ""
    token_ids: tuple[int, ...] | None = None   # None: the server did not send ids
    finish_reason: str | None = None
    tool_calls: bool = False                   # the delta carries tool-call pieces
    role_only: bool = False                    # nothing but the role (a chat stream's first chunk)
    usage: dict | None = None
    logprobs: tuple[dict, ...] | None = None   # one entry per token, chat form (see logprob_entries)
    delta_extra: dict | None = None            # the chat delta's other fields (tool_calls, reasoning_content, ...)
    tool_pieces: tuple | None = None           # ((index, id, name, arguments piece), ...): tool-call pieces


def as_dict(chunk: Any) -> dict | str:
    """JSON-ready form (SDK objects through ``model_dump``)."""
    if isinstance(chunk, (dict, str)):
        return chunk
    dump = getattr(chunk, "model_dump", None)
    if dump is not None:
        return dump(mode="json", exclude_unset=True, warnings=False)   # (a parsed completion's generic fields warn)
    raise TypeError(f"l0: can't read a chunk of type {type(chunk).__name__}")


def parts(chunk: Any, index: int = 0) -> Parts:
    """Text, token ids and finish reason of choice ``index`` of one chunk."""
    if isinstance(chunk, str):
        return Parts(text=chunk)
    d = as_dict(chunk)
    usage = d.get("usage") or None
    choice = None
    for c in d.get("choices") or ():
        if c.get("index", 0) == index:
            choice = c
            break
    if choice is None:
        return Parts(usage=usage, role_only=True)
    ids = choice.get("token_ids")
    lp = logprob_entries(choice.get("logprobs"))
    delta = choice.get("delta")
    extra = None
    if delta is not None:  # chat
        text = delta.get("content") or ""
        tools = bool(delta.get("tool_calls") or delta.get("function_call"))
        pieces = tuple((int(t.get("index") or 0), t.get("id"), (t.get("function") or {}).get("name"),
                        (t.get("function") or {}).get("arguments") or "")
                       for t in delta.get("tool_calls") or ()) or None
        extra = {k: v for k, v in delta.items() if k not in ("content", "role") and v not in (None, [])} or None
        role_only = not text and not extra and not choice.get("finish_reason") and ids is None
    else:
        text = choice.get("text") or ""
        tools, role_only, pieces = False, False, None
    return Parts(text=text, token_ids=tuple(ids) if ids is not None else None,
                 finish_reason=choice.get("finish_reason"), tool_calls=tools, role_only=role_only,
                 usage=usage, logprobs=lp, delta_extra=extra, tool_pieces=pieces)


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def logprob_entries(logprobs: Any) -> tuple[dict, ...] | None:
    """A choice's ``logprobs`` in the chat form, one entry per token
    (``{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
    "bytes"}]}``), from either API: chat's ``{"content": [...]}`` as it is,
    completions' parallel lists (``tokens``, ``token_logprobs``,
    ``top_logprobs`` as ``{token: logprob}``) converted. None when absent.
    A checkpoint continuation is a completions request: this is how its
    logprobs reach a chat caller."""
    if not isinstance(logprobs, dict):
        return None
    if "content" in logprobs:
        content = logprobs.get("content")
        return tuple(dict(e) for e in content) if content is not None else None
    tokens = logprobs.get("tokens")
    if tokens is None:
        return None
    values = logprobs.get("token_logprobs") or [None] * len(tokens)
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    out = []
    for tok, lp, top in zip(tokens, values, tops):
        e = _entry(tok, lp)
        e["top_logprobs"] = [_entry(t, v) for t, v in (top or {}).items()]
        out.append(e)
    return tuple(out)


def completion_logprobs(entries: Sequence[dict], offset: int) -> dict:
    """Chat-form ``entries`` as a completions ``logprobs`` object, the
    first token's text at char ``offset`` of the answer."""
    text_offset, at = [], offset
    for e in entries:
        text_offset.append(at)
        at += len(e["token"])
    return {"text_offset": text_offset, "token_logprobs": [e["logprob"] for e in entries],
            "tokens": [e["token"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs") or ()} for e in entries]}


def chat_chunk(meta: dict, text: str, token_ids: list[int] | None, finish_reason: str | None,
               sdk: bool = True, usage: dict | None = None, usage_only: bool = False,
               logprobs: Sequence[dict] | None = None, delta_extra: dict | None = None) -> Any:
    """A ``chat.completion.chunk`` carrying ``text`` under the stream's
    identity (``meta``: id, created, model, system_fingerprint of its first
    chunk). An SDK ``ChatCompletionChunk`` when ``sdk`` and openai is
    installed, else the dict. ``usage`` rides along; ``usage_only``: the
    ``stream_options.include_usage`` chunk (``choices: []``); ``logprobs``:
    chat-form entries (:func:`logprob_entries`); ``delta_extra``: delta
    fields besides the text (tool-call pieces, reasoning), kept as they came."""
    choices: list[dict[str, Any]] = []
    if not usage_only:
        delta = {"content": text} if text or not (finish_reason or delta_extra) else {}
        if delta_extra:
            delta.update(delta_extra)
        choice: dict[str, Any] = {"index": 0, "delta": delta,
                                  "finish_reason": finish_reason,
                                  "logprobs": {"content": list(logprobs)} if logprobs is not None else None}
        if token_ids is not None:
            choice["token_ids"] = list(token_ids)
        choices.append(choice)
    return _envelope(meta, "chat.completion.chunk", choices, usage, sdk)


def completion_chunk(meta: dict, text: str, token_ids: list[int] | None, finish_reason: str | None,
                     sdk: bool = True, usage: dict | None = None, usage_only: bool = False,
                     logprobs: Sequence[dict] | None = None, text_offset: int = 0) -> Any:
    """The ``text_completion`` twin of :func:`chat_chunk` (``text_offset``:
    where this chunk's text starts in the answer, for its logprobs)."""
    choices: list[dict[str, Any]] = []
    if not usage_only:
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish_reason,
                                  "logprobs": completion_logprobs(logprobs, text_offset)
                                  if logprobs is not None else None}
        if token_ids is not None:
            choice["token_ids"] = list(token_ids)
        choices.append(choice)
    return _envelope(meta, "text_completion", choices, usage, sdk)


def _envelope(meta: dict, obj: str, choices: list[dict], usage: dict | None, sdk: bool) -> Any:
    """A chunk of kind ``obj`` around ``choices``, under the stream's identity."""
    d = {"id": meta.get("id", ""), "object": obj, "created": meta.get("created", 0),
         "model": meta.get("model", ""), "choices": choices}
    if meta.get("system_fingerprint") is not None:
        d["system_fingerprint"] = meta["system_fingerprint"]
    if usage is not None:
        d["usage"] = usage
    return rebuild(d) if sdk else d


def rebuild(d: Any) -> Any:
    """The SDK object for a chunk dict (by its ``object``), or the dict itself
    when openai is missing or the object is unknown. Built the way the SDK
    builds streamed chunks (``construct``: no validation, so a streamed
    ``Completion``'s ``finish_reason: null`` is kept)."""
    if not isinstance(d, dict):
        return d
    kind = d.get("object")
    try:
        if kind == "chat.completion.chunk":
            from openai.types.chat import ChatCompletionChunk
            return ChatCompletionChunk.construct(**d)
        if kind == "text_completion":
            from openai.types import Completion
            return Completion.construct(**d)
    except ImportError:
        pass
    return d


def meta_of(chunk: Any) -> dict:
    d = as_dict(chunk)
    if not isinstance(d, dict):
        return {}
    return {k: d.get(k) for k in ("id", "object", "created", "model", "system_fingerprint")}


def with_token_ids(chunk: Any, kept: list[int], text: str) -> Any:
    """``chunk`` with choice 0 cut to ``kept`` ids and ``text`` (a chunk that
    straddles the point a regenerated stream catches up)."""
    d = dict(as_dict(chunk))
    choices = [dict(c) for c in d.get("choices") or ()]
    for c in choices:
        if c.get("index", 0) == 0:
            entries = logprob_entries(c.get("logprobs"))
            if entries is not None:  # one per token: the kept ids are the last ones
                first = len(entries) - len(kept)
                kept_entries = list(entries[first:]) if kept else []
                if "delta" in c:
                    c["logprobs"] = {"content": kept_entries}
                else:
                    offsets = c["logprobs"].get("text_offset") or []
                    c["logprobs"] = completion_logprobs(kept_entries, offsets[first] if first < len(offsets) else 0)
            c["token_ids"] = list(kept)
            if "delta" in c:
                c["delta"] = {**(c.get("delta") or {}), "content": text}
            else:
                c["text"] = text
    d["choices"] = choices
    return rebuild(d) if not isinstance(chunk, dict) else d


def choices_of(completion: Any) -> list[str]:
    """The text of every choice of a non-streamed ``ChatCompletion`` (message
    content) or ``Completion`` (text), SDK object or dict, in choice-index
    order; a choice without text (tool calls only) gives ``""``. Raises
    TypeError for anything ``l0.client.chunks.as_dict`` can't read."""
    d = as_dict(completion)
    if not isinstance(d, dict):
        raise TypeError(f"l0: not a completion: {type(completion).__name__}")
    choices = list(d.get("choices") or ())
    order = sorted(range(len(choices)), key=lambda p: (choices[p].get("index", p), p))
    out = []
    for p in order:
        c = choices[p]
        msg = c.get("message")
        out.append(((msg or {}).get("content") if msg is not None else c.get("text")) or "")
    return out
