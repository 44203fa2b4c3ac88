"""The JSON state tracker (:mod:`l0.engine.jsonstate`, carried by every detect
backend): per-token tables built from the tokenizer, O(1) per token, equal to
Python's own JSON scanning (``json.decoder.scanstring`` finds the strings) at
every token boundary, over random nested JSON cut by SmolLM2's tokenizer
(marker ``smollm2``): strings with escapes and unicode, numbers, nesting to
depth 32; in the reference, torch and fused CPU backends, and on a GPU (marker
``gpu``) in the torch-CUDA and CUDA-kernel backends."""
from __future__ import annotations

import functools
import json
import os
import random
from json.decoder import scanstring
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from l0.engine import jsonstate as js
from l0.engine.config import DetectorParams
from l0.engine.ops import make_detector

NO_LOOPS = DetectorParams(min_repeats=0, near_min_repeats=0, echo_ngram=0, max_blank_run=0, max_period=8)


# -- the spec on hand-made tokens ----------------------------------------------

def test_token_effect():
    e = js.token_effect('"}]},{"', js.STR)
    assert (e.end, e.pops, e.pushes, e.commas, e.closes_string, e.opens_string) == (js.STR, 3, 1, 1, True, True)
    e = js.token_effect('{"a": [1, "x\\', js.OUT)
    assert (e.end, e.pushes, e.pops, e.commas) == (js.ESC, 2, 0, 1)
    assert js.token_effect('"', js.ESC).end == js.STR  # an escaped quote stays in the string
    assert js.token_effect('}]', js.STR).end == js.STR and js.token_effect('}]', js.STR).pops == 0
    assert js.token_effect('[]', js.OUT).delta == 0


def test_close_scores_order_the_shortest_end_first():
    def score(text, start=js.OUT):
        return js.close_score(js.token_effect(text, start), start)
    # Inside a string: ending it (and more closers) beats continuing it.
    assert score('"}]}', js.STR) > score('"}', js.STR) > score('"', js.STR) > 0 > score("abc", js.STR)
    # Between values: closing first; then what a grammar may still demand (a
    # comma and the next key, a colon, a string, a value, an empty container),
    # then opening a container; idle whitespace last, so a row never idles
    # while a required field is missing.
    assert score("}") > score("[]") == score(":") == 0 > score(",") == score(' "') > score("12") > score("{")
    assert score("{") > score(" ") == score("\n    ")
    assert score("},{") < 0 and score("}]}") == 3 * score("}")


def test_tracker_step_and_lost():
    tables = js.tables_from_texts(['{"a', '":', " [1", "]}", "}", "\\"], special_ids=())
    state, depth = js.OUT, 0
    trail = []
    for tok in (0, 1, 2, 3):
        state, depth = js.step(state, depth, tok, tables)
        trail.append((state, depth))
    assert trail == [(js.STR, 1), (js.OUT, 1), (js.OUT, 2), (js.OUT, 0)]
    assert js.step(js.OUT, 0, 4, tables) == (js.LOST, 0)  # a closer at depth 0: not JSON we follow
    assert js.step(js.STR, 1, 5, tables) == (js.ESC, 1)
    assert js.step(js.LOST, 0, 0, tables) == (js.LOST, 0)
    assert js.close_need(js.STR, 3, 8) == 13 and js.close_need(js.OUT, 0, 8) == 9


def test_minimal_instance():
    person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "age"]}
    assert js.minimal_instance(person) == {"name": "", "age": 0}
    assert js.minimal_instance({"type": "array", "items": person, "minItems": 2}) == [{"name": "", "age": 0}] * 2
    assert js.minimal_instance({"enum": ["b", "a"]}) == "b" and js.minimal_instance({"const": 3}) == 3
    assert js.minimal_instance({"anyOf": [person, {"type": "null"}]}) is None  # null is the shortest
    assert js.minimal_instance({"oneOf": [person, {"type": "boolean"}]}) is False
    assert js.minimal_instance({"type": "integer", "minimum": 5}) == 6
    assert js.minimal_instance({"type": "string", "minLength": 3}) == "xxx"
    ref = {"$defs": {"P": person}, "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "required": ["p"]}
    assert js.minimal_instance(ref) == {"p": {"name": "", "age": 0}}
    both = {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]},
                      {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}], "type": "object"}
    assert js.minimal_instance(both) == {"a": "", "b": False}
    assert js.minimal_instance({"$ref": "https://example.com/s.json"}) is js.UNKNOWN  # not local
    assert js.minimal_instance({"description": "anything"}) is js.UNKNOWN
    encode = lambda text: text.split()  # a token per space-separated word  # noqa: E731
    assert js.schema_margin(person, encode, 8) == 8  # '{"name": "", "age": 0}': 4 words + 4 < 8
    big = {"type": "object", "properties": {f"k{i}": {"type": "string"} for i in range(9)},
           "required": [f"k{i}" for i in range(9)]}
    assert js.schema_margin(big, encode, 8) == 18 + 4
    assert js.schema_margin({"$ref": "#/nope"}, encode, 8) == 8


# -- Python's own scanning -----------------------------------------------------

def python_states(text: str) -> list[tuple[int, int]]:
    """(state, depth) after each prefix text[:b], b = 0..len(text), from
    json.decoder.scanstring's string spans and a bracket count outside them."""
    out = [(js.OUT, 0)]
    depth, i = 0, 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            _, end = scanstring(text, i + 1)  # the index just past the closing quote
            out.append((js.STR, depth))  # after the opening quote
            escaped = False
            for j in range(i + 1, end - 1):  # the string's body
                escaped = (not escaped) and text[j] == "\\"
                out.append((js.ESC if escaped else js.STR, depth))
            out.append((js.OUT, depth))  # after the closing quote
            i = end
            continue
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        out.append((js.OUT, depth))
        i += 1
    assert len(out) == len(text) + 1
    return out


def test_python_states_on_escapes():
    text = '{"a\\"b": ["\\\\", "\\u00e9"]}'
    st_ = python_states(text)
    assert st_[-1] == (js.OUT, 0)
    assert st_[text.index("\\") + 1] == (js.ESC, 1)  # right after the escaping backslash
    assert st_[text.index('"b"') + 1] == (js.STR, 1)  # the escaped quote stayed in the string
    assert max(d for _, d in st_) == 2


# -- JSON documents and a real tokenizer -------------------------------------------

def json_values(max_depth: int):
    text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x1F64F, exclude_categories=("Cs",)), max_size=12)
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                        st.floats(allow_nan=False, allow_infinity=False), text)
    return st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                        st.dictionaries(text, kids, max_size=4)),
                        max_leaves=max_depth * 2)


def nested(depth: int, rng: random.Random):
    value = rng.choice(["x\\\"y", 1.5, None, "é😀", '}]{["'])
    for _ in range(depth):
        value = {f"k{rng.randrange(9)}\"": value} if rng.random() < 0.5 else [value, "],"]
    return value


@functools.cache
def tokenizer():
    from tokenizers import Tokenizer
    path = os.environ.get("L0_TOKENIZER_JSON")
    if not path:
        from l0.engine.models import prepare_smollm2
        path = str(prepare_smollm2() / "tokenizer.json")
    return Tokenizer.from_file(path)


@functools.cache
def tables() -> js.JsonTables:
    tok = tokenizer()
    n = tok.get_vocab_size()
    texts = [tok.decode([i], skip_special_tokens=False) for i in range(n)]
    special = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]
    return js.tables_from_texts(texts, special)


def encode(doc: str) -> tuple[list[int], list[int]]:
    """Token ids and, per token, the character offset its boundary falls at."""
    enc = tokenizer().encode(doc, add_special_tokens=False)
    return enc.ids, [end for _, end in enc.offsets]


class Chunker:
    """A tokenizer for tests without a model: cuts text into random 1-6
    character pieces (so escapes, quotes and brackets land anywhere in a
    token and across tokens); the vocabulary is every piece seen."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.ids: dict[str, int] = {}

    def encode(self, doc: str) -> tuple[list[int], list[int]]:
        ids, ends, i = [], [], 0
        while i < len(doc):
            j = min(len(doc), i + self.rng.randint(1, 6))
            ids.append(self.ids.setdefault(doc[i:j], len(self.ids)))
            ends.append(j)
            i = j
        return ids, ends

    def tables(self) -> js.JsonTables:
        texts = [""] * len(self.ids)
        for text, i in self.ids.items():
            texts[i] = text
        return js.tables_from_texts(texts + [""])


def run_backends(docs: list[str], backends, chunker: Chunker | None = None) -> None:
    """Feed each doc's tokens to one slot; after every token every backend's
    (state, depth) equals Python's scanning at that token's boundary.
    ``chunker``: cut the docs with it instead of SmolLM2's tokenizer."""
    streams, bounds, expect = [], [], []
    for doc in docs:
        ids, ends = chunker.encode(doc) if chunker else encode(doc)
        streams.append(ids)
        bounds.append(ends)
        expect.append(python_states(doc))
    json_tables = chunker.tables() if chunker else tables()
    n = len(docs)
    dets = []
    for backend, device in backends:
        det = make_detector(n, 8, None, device=device, backend=backend, json=json_tables)
        for s in range(n):
            det.configure(s, NO_LOOPS, json=True)
        dets.append(det)
    for t in range(max(len(x) for x in streams)):
        toks = [x[t] if t < len(x) else -1 for x in streams]
        for det in dets:
            det.step(toks if det.backend == "reference" else torch.tensor(toks, device=det_device(det)))
        for s in range(n):
            if t < len(streams[s]):
                want = expect[s][bounds[s][t]]
                for det, (backend, device) in zip(dets, backends):
                    assert det.json_state(s) == want, (
                        f"{backend}-{device} doc {s} token {t} "
                        f"at char {bounds[s][t]} of {docs[s][:200]!r}")
    for s in range(n):
        for det in dets:
            assert det.json_state(s) == (js.OUT, 0)


def det_device(det):
    return getattr(det, "device", "cpu")


def _docs(values, ascii_only: bool, seed: int) -> list[str]:
    """The drawn values as JSON text, plus a 32-deep document."""
    return [json.dumps(v, ensure_ascii=ascii_only) for v in values] + [json.dumps(nested(32, random.Random(seed)))]


CPU_BACKENDS = [("reference", "cpu"), ("torch", "cpu"), ("cpu", "cpu")]
CPU_ONLY = [("reference", "cpu"), ("torch", "cpu")]
GPU_BACKENDS = [("reference", "cpu"), ("torch", "cuda"), ("cuda", "cuda")]


@pytest.mark.smollm2
@pytest.mark.cc
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values(8), min_size=1, max_size=4), st.booleans())
def test_tracker_equals_python_scanning(values, ascii_only):
    docs = [json.dumps(v, ensure_ascii=ascii_only) for v in values]
    run_backends(docs, CPU_BACKENDS)


@pytest.mark.smollm2
@pytest.mark.cc
def test_tracker_to_depth_32():
    rng = random.Random(0)
    docs = [json.dumps(nested(d, rng), ensure_ascii=rng.random() < 0.5) for d in (1, 8, 31, 32)]
    run_backends(docs, CPU_BACKENDS)


@pytest.mark.smollm2
@pytest.mark.gpu
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values(8), min_size=1, max_size=4), st.booleans())
def test_tracker_on_the_gpu(values, ascii_only):
    run_backends(_docs(values, ascii_only, len(values)), GPU_BACKENDS)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values(8), min_size=1, max_size=4), st.booleans(), st.integers(0, 2**16))
def test_tracker_with_random_cuts(values, ascii_only, seed):
    """No model needed: the same check with the text cut at random places."""
    run_backends(_docs(values, ascii_only, seed), CPU_ONLY, Chunker(seed))


@pytest.mark.gpu
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values(8), min_size=1, max_size=4), st.booleans(), st.integers(0, 2**16))
def test_tracker_with_random_cuts_on_the_gpu(values, ascii_only, seed):
    run_backends(_docs(values, ascii_only, seed), GPU_BACKENDS, Chunker(seed))
