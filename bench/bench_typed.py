"""How rarely ``l0.structured`` has to repair or re-ask, with and without L0's
JSON close at the budget (``l0_close_at_budget``, switched per request on
one ``l0 serve``).

Every schema of ``tests/data/structured_cases.py`` (12, SmolLM2, greedy) at
several budgets (``max_tokens``), close on and close off, the order of the
two alternated per budget. Each call ends as ``first_try`` | ``resumed`` |
``closed`` (L0 closed the JSON: valid without the client's help) |
``repaired`` (json_repair, schema mode) | ``reasked`` | ``failed``. The
table gives the counts per budget and switch, and the share of calls that
needed the client's repair or a re-ask.

Writes ``bench/results/bench_typed.json``.

    .venv/bin/python bench/bench_typed.py                       # budgets 24,48,96,200
    .venv/bin/python bench/bench_typed.py --budgets 32 --limit 4  # a quick look
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))
sys.path.insert(0, str(ROOT / "tests" / "data"))

ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.25", "--max-model-len", "2048", "--enforce-eager",
        "--max-num-seqs", "32", "--seed", "0"]
OUTCOMES = ("first_try", "resumed", "closed", "repaired", "reasked", "failed")


async def one(url: str, model: str, name: str, budget: int, close: bool) -> dict:
    import l0
    from openai import AsyncOpenAI
    from structured_cases import CASES

    schema, messages = CASES[name]
    client = AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0)
    t0 = time.perf_counter()
    try:
        r = await l0.structured(l0.wrap(client), schema, messages=messages, model=model, temperature=0.0,
                                max_tokens=budget, detail=True,
                                extra_body={"vllm_xargs": {"l0_close_at_budget": close}})
        how, requests, finish = r.how, r.requests, r.finish_reason
    except l0.StructuredFailed as exc:
        how, requests, finish = "failed", len(exc.errors), None
    finally:
        await client.close()
    return {"schema": name, "budget": budget, "close": close, "how": how, "requests": requests,
            "finish_reason": finish, "seconds": round(time.perf_counter() - t0, 3)}


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for budget in sorted({r["budget"] for r in rows}):
        for close in (True, False):
            sel = [r for r in rows if r["budget"] == budget and r["close"] == close]
            c = Counter(r["how"] for r in sel)
            helped = c["repaired"] + c["reasked"] + c["failed"]
            out.append({"budget": budget, "close_at_budget": close, "calls": len(sel),
                        **{k: c[k] for k in OUTCOMES}, "client_fixes_share": round(helped / max(1, len(sel)), 3),
                        "requests": sum(r["requests"] for r in sel)})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="24,48,96,200")
    ap.add_argument("--limit", type=int, default=0, help="only the first N schemas")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_typed.json"))
    args = ap.parse_args(argv)

    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server
    from structured_cases import CASES

    names = list(CASES)[:args.limit or None]
    budgets = [int(b) for b in args.budgets.split(",")]
    model = str(prepare_smollm2())
    tmp = Path(tempfile.mkdtemp(prefix="bench-typed-"))
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": f"sqlite://{tmp}/ck.db"}
    rows: list[dict] = []
    with Server(model, ARGS, env=env, log_path=tmp / "server.log") as srv:
        for i, budget in enumerate(budgets):
            order = (True, False) if i % 2 == 0 else (False, True)
            for close in order:
                async def batch():
                    return await asyncio.gather(*[one(srv.url, model, n, budget, close) for n in names])
                rows += asyncio.run(batch())
    table = summarize(rows)
    print(f"{'budget':>6} {'close':>5} " + " ".join(f"{k:>9}" for k in OUTCOMES) + "  client fixes")
    for t in table:
        print(f"{t['budget']:>6} {str(t['close_at_budget']):>5} " + " ".join(f"{t[k]:>9}" for k in OUTCOMES)
              + f"  {t['client_fixes_share']:.0%}")
    result = {"bench": "typed", "model": "SmolLM2-135M-Instruct", "schemas": names, "budgets": budgets,
              "summary": table, "calls": rows,
              "env": {"python": platform.python_version(), "machine": platform.machine(),
                      "date": time.strftime("%Y-%m-%d")},
              "command": "bench/bench_typed.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
