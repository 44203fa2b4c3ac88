"""``l0`` command line: ``serve``, ``scan``, ``demo``, ``replay``, ``triton-probe``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence, TextIO

from l0.engine.config import ACTIONS, DetectorParams, OptionError, load_server_config

FQCN = "l0.vllm:L0LogitsProcessor"


def serve(argv: Sequence[str]) -> int:
    """``l0 serve MODEL [--l0-action A] [--l0-config F] [--l0-store URL] [vLLM server args...]``.

    Execs vLLM's OpenAI server with L0 as a logits processor. L0's default
    action here is ``stop`` (an engine that only has L0 installed observes).
    Binds to 127.0.0.1 unless ``--host`` is given.
    """
    p = argparse.ArgumentParser(prog="l0 serve", add_help=True)
    p.add_argument("model")
    p.add_argument("--l0-action", choices=ACTIONS, default=os.environ.get("L0_ACTION", "stop"))
    p.add_argument("--l0-config", default=os.environ.get("L0_CONFIG"))
    p.add_argument("--l0-store", default=os.environ.get("L0_CHECKPOINT_STORE"),
                   help="checkpoint store URL (sqlite:///path, redis://host:port/db, rediss://...) or off")
    ours, rest = p.parse_known_args(argv)
    import importlib.util
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        print("l0 serve: the engine side is not installed here: pip install 'l0[vllm]' (GPUs) "
              "or 'l0[cpu]' (vLLM's CPU build)", file=sys.stderr)
        return 2
    env = dict(os.environ, L0_ACTION=ours.l0_action)
    # vLLM loads endpoint plugins only when VLLM_PLUGINS names them. Note that
    # setting VLLM_PLUGINS also turns it into an allowlist for general plugins.
    named = [p for p in env.get("VLLM_PLUGINS", "").split(",") if p]
    if "l0" not in named:
        env["VLLM_PLUGINS"] = ",".join(named + ["l0"])
    if ours.l0_config:
        env["L0_CONFIG"] = os.path.abspath(ours.l0_config)
    if ours.l0_store:
        env["L0_CHECKPOINT_STORE"] = ours.l0_store
    try:  # refuse to start on a bad config, before vLLM spends time loading
        os.environ.update({k: env[k] for k in ("L0_ACTION", "L0_CONFIG", "L0_CHECKPOINT_STORE") if k in env})
        load_server_config()
    except (OptionError, OSError) as exc:
        print(f"l0 serve: {exc}", file=sys.stderr)
        return 2
    args = list(rest)
    refusal = speculative_refusal(args, env)
    if refusal:
        print(f"l0 serve: {refusal}", file=sys.stderr)
        return 2
    if "--host" not in args and not any(a.startswith("--host=") for a in args):
        args += ["--host", "127.0.0.1"]
    args += ["--logits-processors", FQCN]
    # Engines publish their health in a status directory; the HTTP server reads it (l0.engine.health.status)
    # and removes it at exit; those of servers killed before they could are swept now. Made last, so a
    # refusal above leaves nothing behind. An operator's L0_STATUS_DIR is theirs (kept); l0 serve still
    # makes its own, owned one for the temp directory.
    from l0.engine.health.status import make_status_dir, sweep_status_dirs
    sweep_status_dirs()
    owned = make_status_dir()
    if not env.get("L0_STATUS_DIR"):
        env["L0_STATUS_DIR"] = owned
    # vLLM and torch leave files in the temp directory at every exit (ZMQ sockets, a rendezvous file,
    # torch's compile cache): the server gets a private one inside the owned directory, so they go with it.
    private = os.path.join(owned, "tmp")
    os.mkdir(private, 0o700)
    env["TMPDIR"] = private
    from l0.engine.server import vllm_server_argv

    cmd = vllm_server_argv(ours.model, args)
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, env)
    return 0  # pragma: no cover


def v2_runner_expected(env: dict) -> bool:
    """Whether vLLM will pick Model Runner V2: ``VLLM_USE_V2_MODEL_RUNNER``
    when set, else whether a CUDA GPU is visible (V2 is vLLM's default there;
    the CPU build falls back to the V1 runner). A guess made before vLLM
    loads: vLLM may still fall back to V1 for a feature V2 lacks."""
    flag = env.get("VLLM_USE_V2_MODEL_RUNNER")
    if flag is not None and flag.strip():
        return flag.strip().lower() in ("1", "true", "yes")
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def speculative_refusal(args: list[str], env: dict) -> str | None:
    """Why ``l0 serve`` refuses these vLLM arguments, or None. Speculative
    decoding is refused where vLLM's V1 runner will serve: it runs no custom
    logits processor then (vLLM would refuse L0 only after loading the
    model). Model Runner V2 runs L0 with it (L0 acts on each request's first
    row)."""
    spec = [a for a in args if a.split("=", 1)[0] in ("--speculative-config", "--speculative_config", "-sc")]
    if not spec or v2_runner_expected(env):
        return None
    return (f"speculative decoding ({spec[0].split('=', 1)[0]}) is not supported under vLLM's V1 model "
            "runner, which this engine would use (no CUDA GPU, or VLLM_USE_V2_MODEL_RUNNER=0): it runs no "
            "custom logits processor when it is on, so L0 could neither see nor stop a loop. Serve on Model "
            "Runner V2 (vLLM's default on NVIDIA GPUs), without speculative decoding, or without L0.")


def _scan_params(ns) -> DetectorParams:
    base = load_server_config(ns.config).defaults
    changes = {f.name: getattr(ns, f.name) for f in dataclasses.fields(DetectorParams)
               if getattr(ns, f.name) is not None}
    return dataclasses.replace(base, **changes)


def scan_lines(lines, params: DetectorParams, out: TextIO, tokenizer=None) -> int:
    """Audit recorded outputs. One JSON result line per input line; returns the
    number of bad lines (each reported as ``{"line": n, "error": ...}``)."""
    import torch

    from l0.engine.ops import make_detector
    from l0.engine.ops.detect_reference import KIND_NAMES
    from l0.engine.vocab import classes_from_tokenizer, expected_items

    classes = classes_from_tokenizer(tokenizer) if tokenizer is not None else None
    det = make_detector(1, params.max_period, classes)  # the fused CPU kernel when a compiler works
    bad = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("line is not a JSON object")
            ids = rec.get("token_ids")
            if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                    and t >= 0 for t in ids):
                raise ValueError("token_ids must be a list of non-negative integers")
        except ValueError as exc:
            bad += 1
            out.write(json.dumps({"line": n, "error": str(exc)}) + "\n")
            continue
        prompt = rec.get("prompt")
        det.configure(0, params, expected_items(prompt) if isinstance(prompt, str) else 0)
        result = {"id": rec.get("id"), "fired": False, "at": None, "kind": None, "period": None}
        for i, tok in enumerate(ids):
            res = det.step(torch.tensor([tok]))
            kind = int(res.kind[0])
            if kind:
                result.update(fired=True, at=i + 1, kind=KIND_NAMES[kind], period=int(res.period[0]) or None)
                break
        out.write(json.dumps(result) + "\n")
    return bad


def scan(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="l0 scan", description=(
        "Audit recorded outputs: each input line is a JSON object with token_ids (and optional id, "
        "prompt). Prints {id, fired, at, kind, period} per line; at = index of the first token the "
        "server would have replaced."))
    p.add_argument("file", help="JSONL file, or - for stdin")
    p.add_argument("--config", help="server config YAML (defaults as the server uses them)")
    p.add_argument("--tokenizer", help="tokenizer dir/name for content/blank token classes")
    for f in dataclasses.fields(DetectorParams):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=None)
    ns = p.parse_args(argv)
    try:
        params = _scan_params(ns)
        from l0.engine.config import check
        check(params, max(params.max_period, 1))
    except OptionError as exc:
        print(f"l0 scan: {exc}", file=sys.stderr)
        return 2
    tok = None
    if ns.tokenizer:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(ns.tokenizer)
    src = sys.stdin if ns.file == "-" else open(ns.file)
    with src:
        bad = scan_lines(src, params, sys.stdout, tok)
    return 1 if bad else 0


def replay(argv: Sequence[str]) -> int:
    """``l0 replay FILE [--stream ID] [--events | --list | --speed X]``: a
    stream recorded by the client's event log (default: the last one) as
    text, its events as JSON lines, or the list of streams."""
    p = argparse.ArgumentParser(prog="l0 replay")
    p.add_argument("file")
    p.add_argument("--stream", default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--events", action="store_true", help="print the events as JSON lines")
    g.add_argument("--list", action="store_true", help="list the streams: id, chunks, last event")
    p.add_argument("--speed", type=float, default=0.0, help="0: at once; 1: as recorded")
    ns = p.parse_args(argv)
    import time

    from l0.client.chunks import parts
    from l0.client.eventlog import read_log, replay_records

    try:
        if ns.list:
            contents = read_log(ns.file)
            for sid in contents.streams():
                recs = contents.of(sid)
                chunks = sum(r["kind"] == "chunk" for r in recs)
                last = next((r["event"]["type"] for r in reversed(recs) if r["kind"] == "event"), "-")
                print(f"{sid}\t{chunks} chunks\t{last}")
            return 0
        last_ts = None
        for rec, item in replay_records(ns.file, ns.stream):
            if ns.speed > 0 and last_ts is not None and rec["ts"] > last_ts:
                time.sleep((rec["ts"] - last_ts) / ns.speed)
            last_ts = rec["ts"]
            if ns.events:
                if rec["kind"] == "event":
                    print(json.dumps(rec["event"], ensure_ascii=False))
            elif rec["kind"] == "chunk":
                sys.stdout.write(parts(item).text)
                sys.stdout.flush()
        if not ns.events:
            sys.stdout.write("\n")
        return 0
    except (OSError, KeyError) as exc:
        print(f"l0 replay: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: l0 {serve,scan,demo,replay,triton-probe} ...\n"
              "  serve MODEL [vLLM args]  vLLM's OpenAI server with L0 on\n"
              "  scan FILE.jsonl          audit recorded token ids offline\n"
              "  demo                     a runaway loop stopped by a real vLLM server\n"
              "  replay FILE [--stream ID] [--events|--list]\n"
              "                           a stream recorded by the client's event log\n"
              "  triton-probe URL --model M [--reload]\n"
              "                           find (and reload) Triton Python models whose stub died")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        return serve(rest)
    if cmd == "scan":
        return scan(rest)
    if cmd == "replay":
        return replay(rest)
    if cmd == "demo":
        from l0.demo import main as demo_main
        return demo_main(rest)
    if cmd == "triton-probe":
        from l0.engine.triton.probe import main as probe_main
        return probe_main(rest)
    print(f"l0: unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
