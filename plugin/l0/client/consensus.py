"""Agreement between several answers: :func:`consensus` over values (texts,
JSON objects, Pydantic models; majority, unanimous, weighted or best, field
by field for objects), :func:`consensus_of` over ops run together, and
:func:`samples` (``n`` choices of one request).

Pure stdlib. Pydantic is used duck-typed (``model_dump`` /
``model_validate``), never imported.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from l0.client.chunks import choices_of
from l0.client.race import call_op, completion_text, parallel, settle

STRATEGIES = ("majority", "unanimous", "weighted", "best")
RESOLVES = ("vote", "merge", "fail")
MISSING = "<missing>"    # the vote of an answer without a field; never a canonical JSON text

class ConsensusFailed(Exception):
    """Consensus was not reached (``resolve="fail"``), or no op of
    :func:`consensus_of` succeeded. ``result``: the :class:`Consensus` (None
    when there was nothing to compare); ``failed``: op index -> exception."""

    def __init__(self, message: str, result: "Consensus | None" = None,
                 failed: dict[int, BaseException] | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.failed = dict(failed or {})


@dataclass(frozen=True)
class FieldAgreement:
    """One field of object answers. ``value``: the agreed value (the first
    original value among its voters; None when ``missing`` won);
    ``agreement``: its voters' weight / all the weight; ``votes``: canonical
    JSON (or ``"<missing>"``) -> weight; ``dissent``: the answer indexes
    that differ."""
    value: Any
    agreement: float
    votes: dict[str, float]
    dissent: list[int]
    missing: bool = False


@dataclass
class Consensus:
    """The outcome of :func:`consensus`. See there for ``agreement``/``ok``.

    ``votes``: text answers: normalised text -> weight; object answers:
    field -> {canonical JSON -> weight}. ``dissent``: ``(index, answer)`` of
    every answer differing from the value (objects: in at least one field).
    ``fields``: per-field :class:`FieldAgreement` (object answers only).
    ``conflicts``: ``resolve="merge"`` on objects: field -> distinct candidate
    values of the fields below threshold. ``answers``: the answers compared;
    ``indexes``: their indexes (op indexes for :func:`consensus_of`, where
    ``failed`` holds the ops that failed)."""
    value: Any
    agreement: float
    ok: bool
    strategy: str
    votes: dict
    dissent: list
    answers: list
    fields: dict = field(default_factory=dict)
    conflicts: dict = field(default_factory=dict)
    indexes: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict (models dumped, exceptions as text)."""
        return {
            "value": _plain(self.value),
            "agreement": self.agreement,
            "ok": self.ok,
            "strategy": self.strategy,
            "votes": self.votes,
            "dissent": [[i, _plain(a)] for i, a in self.dissent],
            "fields": {k: {"value": _plain(f.value), "agreement": f.agreement, "votes": f.votes,
                           "dissent": f.dissent, "missing": f.missing} for k, f in self.fields.items()},
            "conflicts": {k: [_plain(v) for v in vs] for k, vs in self.conflicts.items()},
            "answers": [_plain(a) for a in self.answers],
            "indexes": list(self.indexes),
            "failed": {str(i): f"{type(e).__name__}: {e}" for i, e in self.failed.items()},
        }


def normalize_text(s: str) -> str:
    """The default text normalisation: Unicode NFKC, casefold, whitespace
    runs collapsed to one space, and surrounding whitespace and trailing
    ``.!?;:`` removed (``" Paris. "`` -> ``"paris"``)."""
    s = " ".join(unicodedata.normalize("NFKC", s).casefold().split())
    return re.sub(r"[\s.!?;:]+\Z", "", s)


def _is_object(x: Any) -> bool:
    return (isinstance(x, Mapping) or callable(getattr(x, "model_dump", None))
            or (dataclasses.is_dataclass(x) and not isinstance(x, type)))


def _as_dict(x: Any) -> dict:
    if isinstance(x, Mapping):
        return dict(x)
    if callable(getattr(x, "model_dump", None)):
        return x.model_dump()
    return dataclasses.asdict(x)


def _plain(x: Any) -> Any:
    """Plain data: models dumped, dataclasses as dicts, tuples as lists."""
    if isinstance(x, Mapping) or _is_object(x):
        return {str(k): _plain(v) for k, v in _as_dict(x).items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _canon(x: Any, norm: Callable[[str], str]) -> Any:
    """The comparable form of a value: strings normalised, objects as plain
    dicts, integral floats as ints (``1.0`` equals ``1``; bools stay bools)."""
    if isinstance(x, str):
        return norm(x)
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    if isinstance(x, Mapping) or _is_object(x):
        return {str(k): _canon(v, norm) for k, v in _as_dict(x).items()}
    if isinstance(x, (list, tuple)):
        return [_canon(v, norm) for v in x]
    return x


def _key(x: Any, norm: Callable[[str], str], text: bool = False) -> str:
    """The vote key of a whole answer or a field value: canonical JSON of
    :func:`_canon`, or with ``text`` (answers that are all strings) the
    normalised text itself. Never ``"<missing>"``, which isn't JSON."""
    if text:
        return norm(x)
    return json.dumps(_canon(x, norm), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _tally(keys: Sequence[str], weights: Sequence[float]) -> tuple[dict[str, float], str]:
    """Votes per key (in first-seen order) and the winner: the most weight,
    ties to the key seen first."""
    votes: dict[str, float] = {}
    for k, w in zip(keys, weights):
        votes[k] = votes.get(k, 0) + w
    best = None
    for k, w in votes.items():      # dicts keep first-seen order: a tie keeps the earlier key
        if best is None or w > votes[best]:
            best = k
    return votes, best


def _reaches(agreement: float, threshold: float) -> bool:
    return agreement >= threshold - 1e-9     # weights are floats: 0.1+0.2 must reach 0.3


def _check(strategy: str, threshold: float, resolve: str, weights: Sequence[float] | None, n: int | None,
           score: Any = None) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"l0: unknown consensus strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if resolve not in RESOLVES:
        raise ValueError(f"l0: unknown consensus resolve {resolve!r}; choose one of {list(RESOLVES)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"l0: consensus threshold must be a number in [0, 1], not {threshold!r}")
    if strategy == "weighted":
        if weights is None:
            raise ValueError("l0: strategy='weighted' needs weights (one per answer)")
        ws = list(weights)
        if n is not None and len(ws) != n:
            raise ValueError(f"l0: {len(ws)} weights for {n} answers")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0
               for w in ws):
            raise ValueError("l0: consensus weights must be finite numbers >= 0")
        if not any(w > 0 for w in ws):
            raise ValueError("l0: consensus weights are all zero")
    elif weights is not None:
        raise ValueError("l0: weights are only used by strategy='weighted'")
    if score is not None and strategy != "best":
        raise ValueError("l0: score is only used by strategy='best'")


def consensus(values: Iterable[Any], *, strategy: str = "majority", threshold: float = 0.5,
              resolve: str = "vote", weights: Sequence[float] | None = None,
              score: Callable[[Any], float] | None = None, normalize: Callable[[str], str] | None = None,
              schema: Any = None) -> Consensus:
    """How far ``values`` (several answers to one question) agree, and on what.

    Answers are either all *whole* answers (strings, or other scalars/lists,
    compared by their normalised text / canonical JSON) or all *objects*
    (dicts, pydantic models via ``model_dump()``, dataclasses), compared
    field by field over the union of their top-level keys: nested values by
    canonical JSON with strings normalised; an answer lacking a key votes
    ``"<missing>"`` for it. Strings are normalised by ``normalize``
    (default :func:`normalize_text`).

    Votes weigh 1 each, or ``weights[i]`` with ``strategy="weighted"``. A
    winner is the key with the most weight; ties go to the one seen first
    (lowest answer index). Agreement of a winner = its weight / all weight.

    * ``majority`` / ``weighted``: whole answers: ``agreement`` is the
      winner's and ``ok`` iff ``agreement >= threshold``. Objects: each field
      has its own winner and agreement, ``ok`` iff *every* field's agreement
      ``>= threshold``, and ``agreement`` is the mean over fields (1.0 with
      no fields).
    * ``unanimous``: the same, with ``ok`` iff every agreement is 1.0
      (``threshold`` is not used).
    * ``best``: the single answer with the highest ``score(answer)``; with
      no ``score``, the one most similar to the others (sum of similarities:
      difflib ratio of normalised texts; for objects the share of equal
      fields over both answers' keys). Ties go to the lowest index.
      ``agreement`` is the share of answers equal to it (objects: in every
      field), ``ok`` iff ``agreement >= threshold``; ``value`` is always that
      answer, and per-field agreements are measured against it.

    ``value``: whole answers: the first original answer with the winning
    key. Objects: the dict of winning field values (first original value of
    each; a field whose winner is ``"<missing>"`` is left out), validated
    with ``schema.model_validate`` when ``schema`` is given (its validation
    error propagates).

    When ``ok`` is False ``resolve`` says what happens: ``vote`` returns the
    result as is; ``merge`` also lists, for object fields below threshold,
    their distinct candidate values (first seen first, ``"<missing>"`` left
    out) in ``conflicts`` (same as ``vote`` for whole answers); ``fail``
    raises :class:`ConsensusFailed` with the result as ``.result``.

    Raises ValueError for no answers, a mix of objects and whole answers, an
    unknown strategy or resolve, a threshold outside [0, 1], ``weights``
    without ``weighted`` (or missing, of the wrong length, negative or all
    zero with it), and ``schema`` with whole answers.
    """
    return _consensus(list(values), None, strategy=strategy, threshold=threshold, resolve=resolve,
                      weights=weights, score=score, normalize=normalize, schema=schema)


def _consensus(answers: list, indexes: list[int] | None, *, strategy: str, threshold: float, resolve: str,
               weights: Sequence[float] | None, score: Callable[[Any], float] | None,
               normalize: Callable[[str], str] | None, schema: Any, failed: dict | None = None) -> Consensus:
    if not answers:
        raise ValueError("l0: consensus needs at least one answer")
    _check(strategy, threshold, resolve, weights, len(answers), score)
    n = len(answers)
    idx = list(indexes) if indexes is not None else list(range(n))
    ws = list(weights) if strategy == "weighted" else [1] * n
    norm = normalize or normalize_text
    kinds = {_is_object(a) for a in answers}
    if len(kinds) > 1:
        raise ValueError("l0: consensus answers must be all objects or all whole answers (text)")
    objects = kinds == {True}
    if schema is not None and not objects:
        raise ValueError("l0: consensus schema needs object answers (dicts, models, dataclasses)")

    if not objects:
        text = all(isinstance(a, str) for a in answers)
        keys = [_key(a, norm, text) for a in answers]
        votes, win = _tally(keys, ws)
        if strategy == "best":
            def similarity(i: int, j: int) -> float:
                if text:
                    return difflib.SequenceMatcher(None, keys[i], keys[j], autojunk=False).ratio()
                return 1.0 if keys[i] == keys[j] else 0.0
            win = keys[_best(answers, score, similarity)]
            agreement = sum(1 for k in keys if k == win) / n
        else:
            agreement = votes[win] / sum(ws)
        ok = (votes[win] == sum(ws)) if strategy == "unanimous" else _reaches(agreement, threshold)
        value = answers[keys.index(win)]
        dissent = [(idx[i], a) for i, (a, k) in enumerate(zip(answers, keys)) if k != win]
        result = Consensus(value=value, agreement=agreement, ok=ok, strategy=strategy, votes=votes,
                           dissent=dissent, answers=answers, indexes=idx, failed=dict(failed or {}))
    else:
        result = _objects(answers, idx, ws, strategy, threshold, resolve, score, norm, failed)
        if schema is not None:
            result.value = schema.model_validate(result.value)
    if not result.ok and resolve == "fail":
        raise ConsensusFailed(f"l0: no consensus ({strategy}): agreement {result.agreement:.3f}"
                              + (f" < threshold {threshold}" if strategy != "unanimous" else " < 1.0"),
                              result=result, failed=failed)
    return result


def _best(answers: list, score: Callable[[Any], float] | None,
          similarity: Callable[[int, int], float]) -> int:
    """The index of the best answer: highest ``score``, or the most similar to
    the others; ties to the lowest index."""
    n = len(answers)
    if score is not None:
        scores = [score(a) for a in answers]
    else:
        scores = [sum(similarity(i, j) for j in range(n) if j != i) for i in range(n)]
    best = 0
    for i in range(1, n):
        if scores[i] > scores[best]:
            best = i
    return best


def _objects(answers: list, idx: list[int], ws: list, strategy: str, threshold: float, resolve: str,
             score: Callable[[Any], float] | None, norm: Callable[[str], str],
             failed: dict | None) -> Consensus:
    dicts = [{str(k): v for k, v in _as_dict(a).items()} for a in answers]
    names: list[str] = []
    for d in dicts:
        names += [k for k in d if k not in names]
    # keys[f][i]: answer i's vote for field f
    keys = {f: [(_key(d[f], norm) if f in d else MISSING) for d in dicts] for f in names}
    n, total = len(answers), sum(ws)

    pick = None
    if strategy == "best":
        def similarity(i: int, j: int) -> float:
            both = [f for f in names if f in dicts[i] or f in dicts[j]]
            if not both:
                return 1.0
            return sum(1 for f in both if keys[f][i] == keys[f][j]) / len(both)
        pick = _best(answers, score, similarity)

    fields: dict[str, FieldAgreement] = {}
    conflicts: dict[str, list] = {}
    votes_all: dict[str, dict] = {}
    value: dict[str, Any] = {}
    any_below = False
    for f in names:
        votes, win = _tally(keys[f], ws)
        if pick is not None:
            win = keys[f][pick]
        agreement = votes[win] / total
        voter = keys[f].index(win)
        missing = win == MISSING
        fa = FieldAgreement(value=None if missing else dicts[voter][f], agreement=agreement, votes=votes,
                            dissent=[idx[i] for i, k in enumerate(keys[f]) if k != win], missing=missing)
        fields[f], votes_all[f] = fa, votes
        if not missing:
            value[f] = fa.value
        below = votes[win] != total if strategy == "unanimous" else not _reaches(agreement, threshold)
        any_below = any_below or below
        if below and resolve == "merge":
            firsts = [keys[f].index(k) for k in votes if k != MISSING]
            conflicts[f] = [dicts[i][f] for i in firsts]

    if pick is not None:
        agreement = sum(1 for i in range(n) if all(keys[f][i] == keys[f][pick] for f in names)) / n
        ok = _reaches(agreement, threshold)
        if ok:
            conflicts = {}
        value = dict(dicts[pick])
    else:
        agreement = sum(fa.agreement for fa in fields.values()) / len(fields) if fields else 1.0
        ok = not any_below
    dissenting = {i for fa in fields.values() for i in fa.dissent}
    dissent = [(idx[i], a) for i, a in enumerate(answers) if idx[i] in dissenting]
    return Consensus(value=value, agreement=agreement, ok=ok, strategy=strategy, votes=votes_all,
                     dissent=dissent, answers=answers, fields=fields, conflicts=conflicts, indexes=idx,
                     failed=dict(failed or {}))


async def consensus_of(ops: Sequence[Callable[[], Any]], *, concurrency: int = 4, **kw: Any) -> Consensus:
    """Runs ``ops`` (at most ``concurrency`` at once, see :func:`parallel`)
    and returns :func:`consensus` of their results; ``kw`` are consensus's
    options (``weights``: one per op).

    An op may return a string, an object, a stream (read to the end: its
    text), or a whole ``ChatCompletion``/``Completion`` (its first choice's
    text; use :func:`choices_of` for ``n > 1``). Ops that fail are left out:
    ``result.failed`` maps their index to the exception, and ``dissent`` /
    ``indexes`` use op indexes. Raises :class:`ConsensusFailed` when no op
    succeeded, and the ValueErrors of :func:`consensus` before running
    anything.
    """
    ops = list(ops)
    if not ops:
        raise ValueError("l0: consensus_of needs at least one op")
    _check(kw.get("strategy", "majority"), kw.get("threshold", 0.5), kw.get("resolve", "vote"),
           kw.get("weights"), len(ops), kw.get("score"))

    async def one(op: Callable[[], Any]) -> Any:
        out = await settle(await call_op(op))
        text = completion_text(out)
        return out if text is None else text

    results = await parallel([(lambda op=op: one(op)) for op in ops], concurrency=concurrency,
                             return_exceptions=True)
    failed = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    good = [i for i in range(len(ops)) if i not in failed]
    if not good:
        listed = "; ".join(f"[{i}] {type(e).__name__}: {e}" for i, e in failed.items())
        raise ConsensusFailed(f"l0: every op of consensus_of failed: {listed}", failed=failed)
    if kw.get("weights") is not None:
        kw = {**kw, "weights": [kw["weights"][i] for i in good]}
        if not any(w > 0 for w in kw["weights"]):
            raise ConsensusFailed("l0: every op with weight > 0 failed", failed=failed)
    opts = {"strategy": "majority", "threshold": 0.5, "resolve": "vote", "weights": None, "score": None,
            "normalize": None, "schema": None, **kw}
    return _consensus([results[i] for i in good], good, failed=failed, **opts)


async def samples(client: Any, n: int, *, schema: Any = None, **params: Any) -> list:
    """``n`` answers from one chat request (``n`` choices: vLLM samples them
    in one batch, sharing the prompt's prefill) — the cheap source of
    samples for :func:`consensus`. ``client``: ``l0.wrap(AsyncOpenAI(...))``
    or a plain ``AsyncOpenAI``; ``params``: ``chat.completions.create``'s
    (``model``, ``messages``, ``temperature``, ``seed``, ...).

    With ``schema`` (a Pydantic model class or a JSON-schema dict) the
    request asks for that structured output and each answer is parsed into
    a dict (a choice that doesn't parse is dropped, so fewer than ``n`` may
    come back): ready for field-by-field consensus
    (``consensus(answers, schema=Model)``). Raises ValueError for
    ``n < 1``."""
    if n < 1:
        raise ValueError("l0: samples needs n >= 1")
    if schema is not None:
        from l0.client.structured import _Schema

        params["response_format"] = _Schema(schema, None).response_format()
    out = choices_of(await client.chat.completions.create(n=n, **params))
    if schema is None:
        return out
    from l0.client.structured import parse

    parsed = []
    for text in out:
        try:
            parsed.append(parse(text))
        except ValueError:
            continue
    return parsed
