"""``l0 triton-probe``: find Python-backend models whose stub process died
behind a READY status, and reload them.

Why: Triton (seen on 2.51) keeps a Python model READY after its stub process
dies; every later request fails with "Stub process '<model>_0_0' is not
healthy" until the model is unloaded and loaded again. ``/v2/health/ready``
and the model's ``ready`` stay green, so only a real request tells.

How: each probed model gets one small streamed request (HTTP
``generate_stream``). L0's models answer the ``l0_probe`` parameter
themselves without touching the LLM; any other model is probed with a body
given by ``--payload MODEL=JSON`` (e.g. a one-token generation). A model
whose answer says its stub is not healthy is *dead*; with ``--reload`` it is
unloaded, waited for, loaded again (explicit model-control mode), and probed
once more. Loading a model also brings back the ensembles that use it.

Exit status: 0 when every probed model answers (after reloads), 1 otherwise,
2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Sequence

STUB_DEAD = ("is not healthy", "Stub process")
PROBE_BODY = {"l0_probe": True, "id": "l0-probe"}


@dataclass
class ProbeResult:
    model: str
    status: str          # ok | dead | error | reloaded | reload_failed
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "status": self.status, "detail": self.detail})


def probe_model(client, url: str, model: str, body: dict, timeout_s: float = 10.0) -> ProbeResult:
    """One streamed request; ``ok`` when the stream delivers without an error."""
    import httpx

    try:
        with client.stream("POST", f"{url}/v2/models/{model}/generate_stream", json=body,
                           timeout=timeout_s) as resp:
            text = "".join(resp.iter_text())
    except httpx.HTTPError as exc:
        return ProbeResult(model, "error", f"{type(exc).__name__}: {exc}")
    for line in text.splitlines():
        if not line.startswith("data: "):
            continue
        try:
            chunk = json.loads(line[6:])
        except ValueError:
            continue
        err = chunk.get("error")
        if err:
            dead = any(s in err for s in STUB_DEAD)
            return ProbeResult(model, "dead" if dead else "error", err)
    if resp.status_code != 200:
        return ProbeResult(model, "error", f"HTTP {resp.status_code}: {text[:300]}")
    return ProbeResult(model, "ok")


def _state(client, url: str, model: str) -> str:
    r = client.post(f"{url}/v2/repository/index", json={}, timeout=10)
    for m in r.json():
        if m.get("name") == model:
            return str(m.get("state", ""))
    return ""


def reload_model(client, url: str, model: str, wait_s: float = 60.0) -> str:
    """Unload, wait until it is no longer UNLOADING, load. Returns "" or the error."""
    r = client.post(f"{url}/v2/repository/models/{model}/unload", json={}, timeout=30)
    if r.status_code != 200:
        return f"unload: HTTP {r.status_code} {r.text[:300]}"
    deadline = time.monotonic() + wait_s
    while _state(client, url, model) == "UNLOADING" and time.monotonic() < deadline:
        time.sleep(0.2)
    r = client.post(f"{url}/v2/repository/models/{model}/load", json={}, timeout=wait_s)
    if r.status_code != 200:
        return f"load: HTTP {r.status_code} {r.text[:300]}"
    return ""


def probe(url: str, models: Sequence[str], payloads: dict[str, dict], reload: bool,
          timeout_s: float = 30.0) -> list[ProbeResult]:
    import httpx

    out = []
    with httpx.Client() as client:
        for model in models:
            body = payloads.get(model, PROBE_BODY)
            res = probe_model(client, url, model, body, timeout_s)
            if res.status == "dead" and reload:
                err = reload_model(client, url, model)
                again = probe_model(client, url, model, body, timeout_s) if not err else None
                if again is not None and again.status == "ok":
                    res = ProbeResult(model, "reloaded", res.detail)
                else:
                    res = ProbeResult(model, "reload_failed", err or again.detail)
            out.append(res)
    return out


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="l0 triton-probe", description=(
        "Probe Triton Python-backend models with a real request; a model whose stub died behind a "
        "READY status is reported (and with --reload unloaded and loaded again)."))
    p.add_argument("url", help="Triton's HTTP address, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", action="append", required=True, help="model to probe (repeatable)")
    p.add_argument("--payload", action="append", default=[], metavar="MODEL=JSON",
                   help="generate_stream body for a model that is not one of L0's")
    p.add_argument("--reload", action="store_true", help="unload + load dead models (explicit mode)")
    p.add_argument("--watch", type=float, default=0.0, metavar="S", help="probe again every S seconds")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="per probe; a dead stub fails each queued request after ~1 s, so a probe "
                        "can wait behind a backlog (a timeout is reported as an error, never reloaded)")
    ns = p.parse_args(argv)
    payloads = {}
    for item in ns.payload:
        name, sep, body = item.partition("=")
        try:
            payloads[name] = json.loads(body)
            if not sep or not isinstance(payloads[name], dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            print(f"l0 triton-probe: bad --payload {item!r}: {exc}", file=sys.stderr)
            return 2
    url = ns.url.rstrip("/")
    while True:
        results = probe(url, ns.model, payloads, ns.reload, ns.timeout)
        for r in results:
            print(r.to_json(), flush=True)
        healthy = all(r.status in ("ok", "reloaded") for r in results)
        if ns.watch <= 0:
            return 0 if healthy else 1
        time.sleep(ns.watch)
