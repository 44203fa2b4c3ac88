"""Detector parameters, server defaults and caps, and per-request option parsing.

Pure Python (``yaml`` imported lazily). Contract:

* :class:`DetectorParams` is the frozen set of knobs one request runs with.
* :func:`load_server_config` reads ``configs/*.yaml`` style files (``L0_CONFIG``).
* :func:`params_from_xargs` turns ``SamplingParams.extra_args`` (the HTTP
  body's ``vllm_xargs``) into ``(action, DetectorParams, key)`` and raises
  :class:`OptionError` (a ``ValueError``, so vLLM answers HTTP 400) naming the
  option and the allowed range.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from l0.contract import (KEY_RULE, OPT_ACTION, OPT_CLOSE_AT_BUDGET, OPT_KEY, OPT_PENALTY, OPT_RESUME_FROM,
                         is_key)

ACTIONS = ("off", "observe", "stop", "penalize")
BACKENDS = ("auto", "torch", "cpu", "cuda", "reference")

# User-facing error strings, named so tests can match them.
ERR_RANGE = "l0: option {name}={value!r} is out of range; allowed: {lo} <= {name} <= {hi}"
ERR_TYPE = "l0: option {name}={value!r} must be {kind}"
ERR_ACTION = "l0: option l0_action={value!r} is not one of " + ", ".join(ACTIONS)
ERR_UNKNOWN = "l0: unknown option {name!r}; known options: {known}"
ERR_KEY = f"l0: option {OPT_KEY} must be {KEY_RULE}"
ERR_PERIOD_ORDER = "l0: l0_min_period ({lo}) must be <= l0_max_period ({hi})"
ERR_BOOL = "l0: option {name}={value!r} must be true or false (or 1/0)"


# Absolute limits of the implementation (state tensors are sized by the server's
# max_period; counters are int32 and exact for sequences up to 2**21 tokens).
HARD_MAX_PERIOD = 4096


class OptionError(ValueError):
    """A per-request or config option is invalid. vLLM turns it into HTTP 400."""


@dataclass(frozen=True)
class DetectorParams:
    """What one request's detector looks for. Ranges are checked by :func:`check`.

    * exact loop: smallest period p in [min_period, max_period] whose tail is
      p-periodic over at least ``min_repeats`` copies and ``min_span`` tokens.
      ``min_repeats = 0`` disables it.
    * near-loop: period p whose tail matches itself (x[t] == x[t-p]) at a
      fraction >= ``near_threshold`` over >= ``near_min_repeats`` copies and
      >= ``near_min_span`` tokens (and more copies than the prompt asked items), with at
      least ``near_min_content`` of the compared positions being matching
      content tokens (words, not digits/punctuation). ``near_min_repeats = 0``
      disables it.
    * echo (template loop): the same phrases keep coming back at no fixed
      period (a block of lines re-emitted with other names and lengths). A
      token echoes when its last ``echo_ngram`` tokens appeared within the
      last max_period tokens (numbers compare equal); fires after a stretch
      of >= ``echo_min_span`` tokens of which >= ``echo_threshold`` echo, with
      >= ``echo_min_content`` echoing content tokens, longer than the
      ``expected_items`` rounds the prompt asked for. ``echo_ngram = 0``
      disables it. A slow backstop: it needs far more evidence than the
      periodic detectors.
    * no-progress: more than ``max_blank_run`` consecutive blank tokens
      (whitespace-only or special-token filler). ``0`` disables it.
    """

    min_period: int = 1
    max_period: int = 512
    min_repeats: int = 3
    min_span: int = 24
    near_threshold: float = 0.9
    near_min_repeats: int = 4
    near_min_span: int = 192
    near_min_content: float = 0.2
    echo_ngram: int = 4
    echo_threshold: float = 0.75
    echo_min_span: int = 512
    echo_min_content: float = 0.15
    max_blank_run: int = 64

    @property
    def echo_threshold_milli(self) -> int:
        return int(round(self.echo_threshold * 1000))

    @property
    def echo_min_content_milli(self) -> int:
        return int(round(self.echo_min_content * 1000))

    @property
    def near_threshold_milli(self) -> int:
        return int(round(self.near_threshold * 1000))

    @property
    def near_min_content_milli(self) -> int:
        return int(round(self.near_min_content * 1000))


# name -> (type, lo, hi) for the detector knobs; hi None means "server cap".
_RANGES: dict[str, tuple[type, float, float | None]] = {
    "min_period": (int, 1, None),
    "max_period": (int, 1, None),
    "min_repeats": (int, 0, 64),
    "min_span": (int, 1, 8192),
    "near_threshold": (float, 0.5, 1.0),
    "near_min_repeats": (int, 0, 256),
    "near_min_span": (int, 1, 65536),
    "near_min_content": (float, 0.0, 1.0),
    "echo_ngram": (int, 0, 64),
    "echo_threshold": (float, 0.5, 1.0),
    "echo_min_span": (int, 1, 65536),
    "echo_min_content": (float, 0.0, 1.0),
    "max_blank_run": (int, 0, 8192),
}


# JSON structured-output rows (schema, json_object, tool calls): the schema
# dictates their punctuation and keys, so records repeat keys by design and
# few compared positions are content. A near-loop there must repeat *every*
# token (numbers equal to numbers): records that differ in any value never
# fire; records that repeat their values do, after 4 copies and 64 tokens
# (unless the prompt asks for that many items). Overridable in the config's
# ``json_detector`` section and per request.
JSON_OVERRIDES = {"near_threshold": 1.0, "near_min_content": 0.1, "near_min_span": 64}

RETENTIONS = ("keep", "delete")


@dataclass(frozen=True)
class CheckpointConfig:
    """Token-state checkpoints (requests opt in with ``vllm_xargs.l0_key``).

    ``store``: a store URL (``sqlite:///path``, ``redis://``, ``rediss://``) or
    ``off``; ``L0_CHECKPOINT_STORE`` in the environment wins. ``every``:
    tokens between snapshots of a request (and one when it finishes).
    ``ttl_s``: lifetime of every record. ``retention``: ``keep`` finished
    records until their TTL, or ``delete`` them when the request finishes.
    ``assign_keys``: give every completion request without a key one (so any
    client's stream is resumable and its record holds L0's verdict); keyed
    or not, the response names the key in an ``x-l0-key`` header.
    """

    store: str = "sqlite:///~/.cache/l0/checkpoints.sqlite3"
    every: int = 16
    ttl_s: int = 24 * 3600
    retention: str = "keep"
    assign_keys: bool = False

    @property
    def enabled(self) -> bool:
        return self.store != "off"

    def check(self) -> "CheckpointConfig":
        if not (self.store == "off" or self.store.split(":", 1)[0] in ("sqlite", "redis", "rediss")):
            from l0.engine.checkpoint.store import redact
            raise OptionError(f"l0: checkpoint.store {redact(self.store)!r} must be off or a sqlite://, "
                              "redis:// or rediss:// URL")
        if not 1 <= self.every <= 65536:
            raise OptionError(ERR_RANGE.format(name="checkpoint.every", value=self.every, lo=1, hi=65536))
        if not 1 <= self.ttl_s <= 365 * 24 * 3600:
            raise OptionError(ERR_RANGE.format(name="checkpoint.ttl_s", value=self.ttl_s, lo=1,
                                               hi=365 * 24 * 3600))
        if self.retention not in RETENTIONS:
            raise OptionError(f"l0: checkpoint.retention {self.retention!r} is not one of keep, delete")
        if not isinstance(self.assign_keys, bool):
            raise OptionError(f"l0: checkpoint.assign_keys must be true or false, not {self.assign_keys!r}")
        return self


ON_STALL = ("none", "exit")


@dataclass(frozen=True)
class HealthConfig:
    """Watchdog, device telemetry and drain.

    ``stall_timeout_s``: fixed stall timeout, or None for adaptive
    ``max(stall_floor_s, stall_factor × p99 step time)``. ``on_stall``:
    ``none`` (report: health fails, requests drain) or ``exit`` (also kill the
    engine process so the orchestrator restarts it). ``retry_after_s``: the
    Retry-After of the 503 new requests get while the replica is FAILED.
    ``replace_vllm_health``: serve L0's verdict on vLLM's own ``/health`` too.
    """

    enabled: bool = True
    stall_floor_s: float = 30.0
    stall_factor: float = 10.0
    stall_timeout_s: float | None = None
    on_stall: str = "none"
    status_interval_s: float = 0.25
    telemetry_interval_s: float = 1.0
    retry_after_s: int = 5
    replace_vllm_health: bool = False

    def check(self) -> "HealthConfig":
        if self.on_stall not in ON_STALL:
            raise OptionError(f"l0: health.on_stall {self.on_stall!r} is not one of none, exit")
        for name, lo, hi in (("stall_floor_s", 0.1, 86400), ("stall_factor", 1.0, 1000),
                             ("status_interval_s", 0.05, 60), ("telemetry_interval_s", 0.05, 3600),
                             ("retry_after_s", 0, 3600)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise OptionError(ERR_RANGE.format(name="health." + name, value=v, lo=lo, hi=hi))
        if self.stall_timeout_s is not None and not 0.1 <= self.stall_timeout_s <= 86400:
            raise OptionError(ERR_RANGE.format(name="health.stall_timeout_s", value=self.stall_timeout_s,
                                               lo=0.1, hi=86400))
        return self


@dataclass(frozen=True)
class ServerConfig:
    """Server-wide settings: defaults for every request and caps on what a
    request may ask for. ``max_period`` sizes the device state."""

    # Safe default: an engine that merely has L0 installed observes; `l0 serve`
    # (and configs/l0.yaml) turn on stop.
    action: str = "observe"
    defaults: DetectorParams = field(default_factory=DetectorParams)
    # Detector knobs that differ for JSON structured-output rows (on top of
    # ``defaults``); see JSON_OVERRIDES.
    json_overrides: dict = field(default_factory=lambda: dict(JSON_OVERRIDES), hash=False)
    max_period_cap: int = 512
    penalty: float = 10.0
    backend: str = "auto"
    log_interventions: bool = True
    # Structured outputs: end a JSON answer with valid JSON when its budget
    # runs out (requests: l0_close_at_budget), starting when the tokens left
    # reach close_margin + its open containers (+1 inside a string).
    close_at_budget: bool = True
    close_margin: int = 8
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    @property
    def json_defaults(self) -> DetectorParams:
        """The defaults of JSON structured-output rows."""
        return dataclasses.replace(self.defaults, **self.json_overrides)

    def check(self) -> "ServerConfig":
        if self.action not in ACTIONS:
            raise OptionError(ERR_ACTION.format(value=self.action))
        if not 1 <= self.max_period_cap <= HARD_MAX_PERIOD:
            raise OptionError(ERR_RANGE.format(name="max_period_cap", value=self.max_period_cap,
                                               lo=1, hi=HARD_MAX_PERIOD))
        if self.backend not in BACKENDS:
            raise OptionError(f"l0: backend {self.backend!r} is not one of " + ", ".join(BACKENDS))
        if not 0.0 < self.penalty <= 1000.0:
            raise OptionError(ERR_RANGE.format(name="penalty", value=self.penalty, lo=0, hi=1000))
        if not isinstance(self.close_at_budget, bool):
            raise OptionError(ERR_BOOL.format(name="close_at_budget", value=self.close_at_budget))
        if not 0 <= self.close_margin <= 4096:
            raise OptionError(ERR_RANGE.format(name="close_margin", value=self.close_margin, lo=0, hi=4096))
        check(self.defaults, self.max_period_cap)
        unknown = sorted(set(self.json_overrides) - set(_RANGES))
        if unknown:
            raise OptionError(f"l0: unknown json_detector key {unknown[0]!r}")
        check(self.json_defaults, self.max_period_cap)
        self.checkpoint.check()
        self.health.check()
        return self


def _bounds(name: str, cap: int) -> tuple[type, float, float]:
    kind, lo, hi = _RANGES[name]
    return kind, lo, cap if hi is None else hi


def check(params: DetectorParams, max_period_cap: int) -> DetectorParams:
    """Raise :class:`OptionError` unless every field is in range."""
    for f in dataclasses.fields(params):
        kind, lo, hi = _bounds(f.name, max_period_cap)
        v = getattr(params, f.name)
        if not lo <= v <= hi:
            raise OptionError(ERR_RANGE.format(name="l0_" + f.name, value=v, lo=lo, hi=hi))
    if params.min_repeats == 1:
        raise OptionError(ERR_RANGE.format(name="l0_min_repeats", value=1, lo=2, hi=64) + " (or 0: off)")
    if params.min_period > params.max_period:
        raise OptionError(ERR_PERIOD_ORDER.format(lo=params.min_period, hi=params.max_period))
    return params


def _coerce(name: str, value: Any, kind: type) -> Any:
    # bool is an int subclass; a JSON true is never a valid count.
    if isinstance(value, bool):
        raise OptionError(ERR_TYPE.format(name=name, value=value,
                                          kind="an integer" if kind is int else "a number"))
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        raise OptionError(ERR_TYPE.format(name=name, value=value, kind="an integer"))
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise OptionError(ERR_TYPE.format(name=name, value=value, kind="a number"))


@dataclass(frozen=True)
class RequestOptions:
    action: str
    params: DetectorParams
    key: str | None
    penalty: float
    # A resumed request: the last ``resume_from`` prompt tokens are output the
    # request generated before (on another replica); see l0.client.resume.
    resume_from: int = 0
    # A JSON structured-output row under stop/penalize ends with valid JSON
    # when its budget runs out (see l0.engine.jsonstate / the act op).
    close_at_budget: bool = True


MAX_RESUME_FROM = 2**21
KNOWN_OPTIONS = (OPT_ACTION, OPT_KEY, OPT_PENALTY, OPT_RESUME_FROM, OPT_CLOSE_AT_BUDGET) + tuple(
    "l0_" + n for n in _RANGES)
def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise OptionError(ERR_BOOL.format(name=name, value=value))


def params_from_xargs(extra_args: Mapping[str, Any] | None, server: ServerConfig,
                      json: bool = False) -> RequestOptions:
    """Parse the ``l0_*`` entries of ``extra_args``; other keys are ignored
    (they belong to other processors). ``json``: the request is a JSON
    structured output (its defaults are ``server.json_defaults``). Raises
    :class:`OptionError`."""
    extra = {k: v for k, v in (extra_args or {}).items() if k.startswith("l0_")}
    unknown = sorted(set(extra) - set(KNOWN_OPTIONS))
    if unknown:
        raise OptionError(ERR_UNKNOWN.format(name=unknown[0], known=", ".join(KNOWN_OPTIONS)))
    action = extra.get(OPT_ACTION, server.action)
    if action not in ACTIONS:
        raise OptionError(ERR_ACTION.format(value=action))
    key = extra.get(OPT_KEY)
    if key is not None and not is_key(key):
        raise OptionError(ERR_KEY)
    penalty = server.penalty
    if OPT_PENALTY in extra:
        penalty = _coerce(OPT_PENALTY, extra[OPT_PENALTY], float)
        if not 0.0 < penalty <= 1000.0:
            raise OptionError(ERR_RANGE.format(name=OPT_PENALTY, value=penalty, lo=0, hi=1000))
    resume_from = 0
    if OPT_RESUME_FROM in extra:
        resume_from = _coerce(OPT_RESUME_FROM, extra[OPT_RESUME_FROM], int)
        if not 0 <= resume_from <= MAX_RESUME_FROM:
            raise OptionError(ERR_RANGE.format(name=OPT_RESUME_FROM, value=resume_from, lo=0,
                                               hi=MAX_RESUME_FROM))
    close_at_budget = server.close_at_budget
    if OPT_CLOSE_AT_BUDGET in extra:
        close_at_budget = _boolean(OPT_CLOSE_AT_BUDGET, extra[OPT_CLOSE_AT_BUDGET])
    changes = {}
    for name in _RANGES:
        opt = "l0_" + name
        if opt in extra:
            kind, _, _ = _bounds(name, server.max_period_cap)
            changes[name] = _coerce(opt, extra[opt], kind)
    params = dataclasses.replace(server.json_defaults if json else server.defaults, **changes)
    # A request that lowers max_period below the default min_period (or raises
    # min_period) is checked as a whole, so the message names the pair.
    check(params, server.max_period_cap)
    return RequestOptions(action=action, params=params, key=key, penalty=penalty, resume_from=resume_from,
                          close_at_budget=close_at_budget)


def load_server_config(path: str | os.PathLike | None = None) -> ServerConfig:
    """Load a YAML server config (``L0_CONFIG`` when ``path`` is None).

    Missing file path → built-in defaults. Unknown keys or bad values raise
    :class:`OptionError` naming them (the server refuses to start rather than
    run with a setting it does not understand).
    """
    path = path if path is not None else os.environ.get("L0_CONFIG")
    if not path:
        return _with_env(ServerConfig()).check()
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except OSError as exc:
        raise OptionError(f"l0: cannot read config {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise OptionError(f"l0: config {path} is not valid YAML: {str(exc)[:300]}") from None
    if not isinstance(doc, dict):
        raise OptionError(f"l0: config {path} must be a mapping")
    doc = doc.get("l0", doc)
    if not isinstance(doc, dict):
        raise OptionError(f"l0: the l0 section of config {path} must be a mapping")
    doc = dict(doc)
    det = _section(doc, "detector", None, path)
    json_det = _section(doc, "json_detector", None, path)
    ckpt = _typed(CheckpointConfig, _section(doc, "checkpoint", CheckpointConfig, path), "checkpoint.")
    health = _typed(HealthConfig, _section(doc, "health", HealthConfig, path), "health.")
    top_fields = {f.name for f in dataclasses.fields(ServerConfig)} - {"defaults", "checkpoint", "health",
                                                                      "json_overrides"}
    unknown = sorted(set(doc) - top_fields, key=str)
    if unknown:
        raise OptionError(f"l0: unknown config key {unknown[0]!r} in {path}")
    doc = _typed(ServerConfig, doc, "")
    cap = doc.get("max_period_cap", ServerConfig.max_period_cap)
    changes = {}
    for name, value in det.items():
        if name not in _RANGES:
            raise OptionError(f"l0: unknown detector key {name!r} in {path}")
        changes[name] = _coerce(name, value, _bounds(name, cap)[0])
    json_overrides = dict(JSON_OVERRIDES)
    for name, value in json_det.items():
        if name not in _RANGES:
            raise OptionError(f"l0: unknown json_detector key {name!r} in {path}")
        json_overrides[name] = _coerce(name, value, _bounds(name, cap)[0])
    try:
        cp = CheckpointConfig(**ckpt)
    except TypeError as exc:
        raise OptionError(f"l0: bad checkpoint section in {path}: {exc}") from None
    try:
        hc = HealthConfig(**health)
    except TypeError as exc:
        raise OptionError(f"l0: bad health section in {path}: {exc}") from None
    return _with_env(ServerConfig(defaults=DetectorParams(**changes), json_overrides=json_overrides, checkpoint=cp,
                                  health=hc, **doc)).check()


def _typed(cls: type, values: dict, prefix: str) -> dict:
    """``values`` for dataclass ``cls`` with each field's declared type
    (``str``, ``bool``, ``int``, ``float``, ``float | None``) checked or
    coerced as request options are; raises OptionError naming the field."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out = dict(values)
    for k, v in values.items():
        kind, name = kinds.get(k, ""), prefix + str(k)
        if kind.endswith("| None") and v is None:
            continue
        kind = kind.replace(" | None", "")
        if kind == "str" and not isinstance(v, str):
            raise OptionError(ERR_TYPE.format(name=name, value=v, kind="a string"))
        if kind == "bool":
            out[k] = _boolean(name, v)
        elif kind in ("int", "float"):
            out[k] = _coerce(name, v, int if kind == "int" else float)
            if kind == "float" and not math.isfinite(out[k]):
                raise OptionError(ERR_TYPE.format(name=name, value=v, kind="a finite number"))
    return out


def _section(doc: dict, name: str, cls: type | None, path) -> dict:
    """Pop sub-mapping ``name`` from ``doc``; unknown keys raise OptionError
    (``cls`` None: the caller checks the keys)."""
    sec = doc.pop(name, {}) or {}
    if not isinstance(sec, dict):
        raise OptionError(f"l0: {name} in {path} must be a mapping")
    if cls is None:
        return dict(sec)
    unknown = sorted(set(sec) - {f.name for f in dataclasses.fields(cls)}, key=str)
    if unknown:
        raise OptionError(f"l0: unknown {name} key {unknown[0]!r} in {path}")
    return dict(sec)


def _with_env(cfg: ServerConfig) -> ServerConfig:
    """The environment wins over the file: ``L0_ACTION`` (``l0 serve
    --l0-action``) and ``L0_CHECKPOINT_STORE`` (``l0 serve --l0-store``)."""
    if os.environ.get("L0_ACTION"):
        cfg = dataclasses.replace(cfg, action=os.environ["L0_ACTION"])
    if os.environ.get("L0_CHECKPOINT_STORE"):
        cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(
            cfg.checkpoint, store=os.environ["L0_CHECKPOINT_STORE"]))
    return cfg
