"""Per-row JSON state for structured outputs: where a JSON answer stands
(inside a string or not, after a backslash, how deep), tracked one *token* at a
time with per-token tables built once from the tokenizer; and the steering that
ends such an answer by the shortest valid route ("close mode").

Pure Python (the spec). The detect op's backends carry the tracker (one table
lookup per token and row, O(1), on the device: ``jstate``/``jdepth``); the act
op applies the close bias. ``tests/engine/test_jsonstate.py`` proves the tracker equal
to Python's own JSON scanner (``json.decoder.scanstring`` for string spans)
over random nested JSON cut by a real tokenizer.

Lexer states: :data:`OUT` (between tokens of JSON), :data:`STR` (inside a
string), :data:`ESC` (inside a string, right after a backslash); :data:`LOST`
(-1): not tracked, or the output stopped being JSON the tracker understands
(a closing bracket at depth 0). Brackets inside strings are text.

A token's effect from each start state is packed in one int32,
``delta * 4 + end_state`` (``delta`` = brackets opened minus closed outside
strings; decode with ``v & 3`` and ``v >> 2``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

OUT, STR, ESC = 0, 1, 2
STATES = (OUT, STR, ESC)
LOST = -1
STATE_NAMES = {OUT: "out", STR: "string", ESC: "escape", LOST: "lost"}

# Close-mode scores, in units of CLOSE_UNIT logits: best first, closing
# (ending the current string, closing containers); then what the grammar may
# still demand before it lets the answer close (a comma and the next key of a
# required field, a colon, a string, a value: a number or a literal), then
# opening a container; whitespace that does nothing comes last, so a row never
# idles in whitespace while a required field is missing.
CLOSE_UNIT = 25.0
_CLOSE_STRING, _CONTINUE_STRING, _CLOSE_CONTAINER, _OPEN_CONTAINER = 4, -1, 4, -4
_COMMA, _OPEN_STRING, _VALUE, _IDLE = -1, -1, -2, -5


@dataclass(frozen=True)
class Effect:
    """What one token's text does from a start state."""

    end: int        # lexer state after the token
    pushes: int     # containers opened and left open by the token
    pops: int       # containers closed that were open before the token
    commas: int     # commas outside strings
    closes_string: bool  # started inside a string and left it
    opens_string: bool   # opened a string that is still open at its end
    values: int = 0      # number / literal characters outside strings (digits, true, null, -, ...)
    idle: bool = False   # nothing but whitespace outside strings

    @property
    def delta(self) -> int:
        return self.pushes - self.pops


def token_effect(text: str, start: int) -> Effect:
    """Scan ``text`` char by char from lexer state ``start`` (OUT/STR/ESC)."""
    st, pushes, pops, commas, values, closed, other = start, 0, 0, 0, 0, False, False
    for ch in text:
        if st == ESC:
            st = STR
        elif st == STR:
            if ch == "\\":
                st = ESC
            elif ch == '"':
                st = OUT
                closed = closed or start != OUT
        elif ch == '"':
            st = STR
            other = True
        elif ch in "{[":
            pushes += 1
        elif ch in "}]":
            if pushes:
                pushes -= 1
            else:
                pops += 1
        elif ch == ",":
            commas += 1
        elif ch == ":":
            other = True
        elif not ch.isspace():
            values += 1
    opened = st != OUT and (start == OUT or closed)
    idle = start == OUT and not (pushes or pops or commas or values or other or text.count("[") or text.count("{"))
    return Effect(st, pushes, pops, commas, closed, opened, values, idle)


def close_score(effect: Effect, start: int) -> int:
    """How much a token moves a JSON answer towards its shortest end (close mode)."""
    if effect.idle:
        return _IDLE
    score = 0
    if start != OUT:
        score += _CLOSE_STRING if effect.closes_string else _CONTINUE_STRING
    score += _CLOSE_CONTAINER * effect.pops + _OPEN_CONTAINER * effect.pushes + _COMMA * effect.commas
    if effect.opens_string:
        score += _OPEN_STRING
    if effect.values and not (effect.pops or effect.commas):
        score += _VALUE  # writing a number or literal is progress only towards a value
    return score


def pack(effect: Effect) -> int:
    return effect.delta * 4 + effect.end


def unpack(value: int) -> tuple[int, int]:
    """(end state, depth delta) of a packed table entry."""
    return value & 3, value >> 2


@dataclass(frozen=True)
class JsonTables:
    """Per-token tables, one row per start state (OUT, STR, ESC), ``vocab``
    entries each: ``next`` (packed effect) and ``bias`` (close-mode logit bias)."""

    next: tuple[tuple[int, ...], ...]
    bias: tuple[tuple[float, ...], ...]

    @property
    def vocab(self) -> int:
        return len(self.next[0])


def tables_from_texts(texts: Sequence[str], special_ids: Iterable[int] = ()) -> JsonTables:
    """Tables from each token id's text. Special tokens (EOS, padding) change
    nothing and get no bias: the stop token is the act op's business."""
    special = set(special_ids)
    nxt, bias = [], []
    for start in STATES:
        row_n, row_b = [], []
        for i, text in enumerate(texts):
            if i in special:
                row_n.append(start)  # delta 0, same state
                row_b.append(0.0)
                continue
            eff = token_effect(text, start)
            row_n.append(pack(eff))
            row_b.append(CLOSE_UNIT * close_score(eff, start))
        nxt.append(tuple(row_n))
        bias.append(tuple(row_b))
    return JsonTables(tuple(nxt), tuple(bias))


def step(state: int, depth: int, token: int, tables: JsonTables) -> tuple[int, int]:
    """The tracker's transition (the spec every backend equals): LOST stays
    LOST; ids past the table take its last entry; a depth below 0 is LOST."""
    if state == LOST:
        return LOST, 0
    end, delta = unpack(tables.next[state][min(token, tables.vocab - 1)])
    if depth + delta < 0:
        return LOST, 0
    return end, depth + delta


UNKNOWN = object()  # minimal_instance could not tell


class _Unknown(Exception):
    pass


def minimal_instance(schema):
    """The smallest JSON value ``schema`` accepts, as far as a heuristic can
    tell: required properties only, "" / 0 / false / null / [] (or minItems
    items), an enum's or const's first value, the shortest choice of
    anyOf/oneOf, allOf merged, local ``$ref``s resolved. :data:`UNKNOWN` when
    it can't tell (no type, a remote ``$ref``, recursion past 32 levels): the
    caller then falls back to its fixed margin. What close mode must still
    write, at most, when it starts from scratch."""
    try:
        return _minimal(schema, None, 0)
    except _Unknown:
        return UNKNOWN


def _minimal(schema, defs: dict | None, depth: int):
    if depth > 32 or not isinstance(schema, dict):
        raise _Unknown
    defs = defs if defs is not None else {**schema.get("$defs", {}), **schema.get("definitions", {})}
    if "$ref" in schema:
        ref = schema["$ref"]
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith("#/") or name not in defs:
            raise _Unknown
        return _minimal(defs[name], defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = []
            for option in schema[key]:
                try:
                    options.append(_minimal(option, defs, depth + 1))
                except _Unknown:
                    pass
            if not options:
                raise _Unknown
            return min(options, key=lambda o: len(json.dumps(o)))
    if schema.get("allOf"):
        merged: dict = {}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged = {**merged, **part, "properties": {**merged.get("properties", {}),
                                                            **part.get("properties", {})},
                          "required": list(merged.get("required", [])) + list(part.get("required", []))}
        return _minimal({**{k: v for k, v in schema.items() if k != "allOf"}, **merged}, defs, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = "null" if "null" in kind else (kind[0] if kind else None)
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _minimal(props.get(name, {"type": "null"}), defs, depth + 1)
                for name in schema.get("required", [])}
    if kind == "array":
        n = int(schema.get("minItems", 0))
        return [_minimal(schema.get("items", {"type": "null"}), defs, depth + 1)] * n if n else []
    if kind == "string":
        return "x" * int(schema.get("minLength", 0))
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        return 0 if lo is None or lo <= 0 else int(lo) + 1
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    raise _Unknown


def schema_margin(schema, encode, base: int) -> int:
    """A row's close margin: ``base`` (the server's), or the tokens of the
    schema's minimal instance written the way models write JSON
    (``json.dumps``' spaces) plus 4, when that is larger. ``encode``: text ->
    token ids."""
    minimal = minimal_instance(schema)
    if minimal is UNKNOWN:
        return base
    return max(base, len(encode(json.dumps(minimal, ensure_ascii=False))) + 4)


def close_need(state: int, depth: int, margin: int) -> int:
    """Tokens a JSON answer is assumed to need to end: a margin (the row's:
    the server's ``close_margin``, or the tokens of its schema's minimal
    instance when that is larger — required fields still to write) + one per
    open container + one to end an open string + one for the stop token (so
    the answer ends with ``finish_reason: "stop"``, not at the budget).
    Close-at-budget starts when the tokens left reach this."""
    return margin + depth + (1 if state in (STR, ESC) else 0) + 1
