"""Streaming guardrails: incremental checks vs rescanning the text so far.

A deterministic synthetic answer (prose, markdown headings, lists and tables,
fenced code, a fenced JSON block, LaTeX environments and display math) is cut
into "tokens" of 2-6 chars (4 on average) and checked with the same rules,
``guardrails.preset("recommended")`` + ``drift.monitors()``, two ways, side by
side in one run:

(a) **L0 incremental** - each token fed once to one Guardrails
    (``feed(token)``), ``finish()`` at the end: total time / tokens = µs per
    token, and the mean per-token cost over the first and the last 10% of the
    tokens (flatness: last/first stays near 1 when a check costs O(token)).
(b) **rescan baseline** - what a non-incremental library does: at every
    token, the same checks over the whole text so far (a ``fresh()`` copy fed
    the full text), ``finish()`` once at the end. O(n^2): run at every token up
    to ``--full-max`` tokens (10 000); above that, measured at ``--samples``
    (200) checks spread evenly over the stream, and its µs/token is the mean
    cost of those checks (one check per token, as in the full runs).

Both must find the same violations (the stream has none by design; any
found are listed). Prints a table and writes
``bench/results/bench_guardrails.json``.

    .venv/bin/python bench/bench_guardrails.py                       # 100 .. 100 000 tokens
    .venv/bin/python bench/bench_guardrails.py --sizes 100,1000      # a quick look
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

from l0 import drift, guardrails  # noqa: E402

WORDS = ("system model answer stream token check rule window buffer offset value request server client cache "
         "latency budget memory kernel thread queue batch retry policy event record replay signal state error "
         "warning table column row header field schema format parser lexer bracket string number object array "
         "document section chapter figure result method sample measure metric river mountain forest garden "
         "harbor bridge market village station library museum theatre kitchen window ladder candle mirror "
         "blue green quiet rapid gentle bright narrow steady careful simple robust modern ancient northern "
         "runs holds takes gives shows finds keeps moves turns builds writes reads sends opens closes counts "
         "after before during within across between under over through beside beyond").split()
NAMES = "alpha beta gamma delta sigma omega theta kappa lambda zeta".split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(7, 16))]
    words[0] = words[0].capitalize()
    if rng.random() < 0.3:
        words.insert(rng.randrange(1, len(words)), str(rng.randint(2, 999)))
    return " ".join(words) + rng.choice(".....?!")


def _section(rng: random.Random, k: int) -> str:
    kind = k % 6
    if kind == 0:
        return f"## {' '.join(rng.choice(WORDS) for _ in range(3)).title()} {k}\n\n" + \
            " ".join(_sentence(rng) for _ in range(rng.randint(3, 6))) + "\n\n"
    if kind == 1:
        return "".join(f"- {_sentence(rng)}\n" for _ in range(rng.randint(2, 4))) + "\n"
    if kind == 2:
        cols = rng.randint(2, 4)
        head = "| " + " | ".join(rng.choice(WORDS).title() for _ in range(cols)) + " |\n"
        rows = "".join("| " + " | ".join(f"{rng.choice(WORDS)} {rng.randint(1, 99)}" for _ in range(cols)) + " |\n"
                       for _ in range(rng.randint(2, 5)))
        return head + "|" + "---|" * cols + "\n" + rows + "\n"
    if kind == 3:
        fn, a, b = rng.choice(WORDS), rng.choice(NAMES), rng.choice(NAMES)
        return (f"```python\ndef {fn}_{k}({a}, {b}):\n    total_{k} = {a} * {rng.randint(2, 9)} + {b}\n"
                f"    return total_{k} % {rng.randint(10, 99)}\n```\n\n")
    if kind == 4:
        doc = {rng.choice(WORDS) + f"_{k}": rng.randint(0, 999), "name": " ".join(rng.sample(WORDS, 2)),
               "tags": rng.sample(WORDS, 3), "nested": {"ok": rng.random() < 0.5, "ratio": round(rng.random(), 3)}}
        return "```json\n" + json.dumps(doc, indent=2) + "\n```\n\n"
    a, b = rng.choice(NAMES), rng.choice(NAMES)
    return (f"The {rng.choice(WORDS)} {rng.choice(WORDS)} follows from\n\\begin{{align}}\n"
            f"  f_{{{k}}}(x) &= \\{a} x^{rng.randint(2, 5)} + \\{b} \\\\\n  g(x) &= \\frac{{{rng.randint(1, 9)}}}"
            f"{{x + {rng.randint(1, 9)}}}\n\\end{{align}}\nand $$\\sum_{{i=1}}^{{{rng.randint(3, 30)}}} i^2$$ "
            f"{_sentence(rng)}\n\n")


def make_tokens(n: int, seed: int = 0) -> list[str]:
    """``n`` tokens (2-6 chars) of a deterministic synthetic answer."""
    rng = random.Random(seed)
    parts, length, k = [], 0, 0
    while length < n * 6 + 10:
        parts.append(_section(rng, k))
        length += len(parts[-1])
        k += 1
    text = "".join(parts)
    tokens, i = [], 0
    while len(tokens) < n:
        step = rng.randint(2, 6)
        tokens.append(text[i:i + step])
        i += step
    return tokens


def make_rules() -> guardrails.Guardrails:
    return guardrails.Guardrails(guardrails.preset("recommended").rules + drift.monitors().rules)


def _key(violations) -> list[tuple]:
    return sorted((v.rule, v.severity, v.start, v.end, v.message) for v in violations)


def run_incremental(tokens: list[str]) -> dict:
    g = make_rules().fresh()
    times = []
    clock = time.perf_counter
    t_all = clock()
    for tok in tokens:
        t0 = clock()
        g.feed(tok)
        times.append(clock() - t0)
    g.finish()
    total = clock() - t_all
    tenth = max(1, len(tokens) // 10)
    first, last = statistics.fmean(times[:tenth]) * 1e6, statistics.fmean(times[-tenth:]) * 1e6
    return {"us_per_token": total / len(tokens) * 1e6, "first10_us": first, "last10_us": last,
            "flatness_last_over_first": last / first, "violations": _key(g.violations)}


def run_baseline(tokens: list[str], full_max: int, samples: int) -> dict:
    spec = make_rules()
    n = len(tokens)
    ends, pos = [], 0
    for tok in tokens:
        pos += len(tok)
        ends.append(pos)
    full = "".join(tokens)
    if n <= full_max:
        checks, mode = list(range(n)), "every token"
    else:
        checks = sorted({round(i * (n - 1) / (samples - 1)) for i in range(samples)})
        mode = f"sampled: {len(checks)} checks spread evenly; us/token = mean check cost"
    clock = time.perf_counter
    spent = 0.0
    g = None
    for i in checks:
        prefix = full[:ends[i]]
        t0 = clock()
        g = spec.fresh()
        g.feed(prefix)
        spent += clock() - t0
    g.finish()
    return {"us_per_token": spent / len(checks) * 1e6, "mode": mode, "checks": len(checks),
            "violations": _key(g.violations)}


def bench(sizes: list[int], full_max: int, samples: int, rounds: int) -> list[dict]:
    rows = []
    print(f"{'tokens':>8} {'chars':>8} {'L0 us/tok':>10} {'first10%':>9} {'last10%':>9} {'flat':>5} "
          f"{'rescan us/tok':>14} {'ratio':>8}  baseline")
    for n in sizes:
        tokens = make_tokens(n)
        inc = min((run_incremental(tokens) for _ in range(rounds)), key=lambda r: r["us_per_token"])
        base = run_baseline(tokens, full_max, samples)
        row = {"tokens": n, "chars": sum(map(len, tokens)),
               "l0_us_per_token": round(inc["us_per_token"], 3),
               "l0_first10_us_per_token": round(inc["first10_us"], 3),
               "l0_last10_us_per_token": round(inc["last10_us"], 3),
               "l0_flatness_last_over_first": round(inc["flatness_last_over_first"], 3),
               "baseline_us_per_token": round(base["us_per_token"], 3),
               "baseline_mode": base["mode"], "baseline_checks": base["checks"],
               "ratio_baseline_over_l0": round(base["us_per_token"] / inc["us_per_token"], 1),
               "violations_l0": [list(v) for v in inc["violations"]],
               "violations_baseline": [list(v) for v in base["violations"]],
               "same_violations": inc["violations"] == base["violations"]}
        rows.append(row)
        print(f"{n:>8} {row['chars']:>8} {row['l0_us_per_token']:>10.2f} {row['l0_first10_us_per_token']:>9.2f} "
              f"{row['l0_last10_us_per_token']:>9.2f} {row['l0_flatness_last_over_first']:>5.2f} "
              f"{row['baseline_us_per_token']:>14.1f} {row['ratio_baseline_over_l0']:>8.1f}  {base['mode']}"
              f"{'' if row['same_violations'] else '  VIOLATIONS DIFFER'}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000,10000,100000")
    ap.add_argument("--full-max", type=int, default=10_000, help="largest size whose baseline checks every token")
    ap.add_argument("--samples", type=int, default=200, help="baseline checks above --full-max")
    ap.add_argument("--rounds", type=int, default=3, help="incremental runs per size (the fastest is kept)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_guardrails.json"))
    ns = ap.parse_args(argv)
    sizes = [int(s) for s in ns.sizes.split(",") if s]
    rows = bench(sizes, ns.full_max, ns.samples, ns.rounds)
    doc = {"meta": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "device": "cpu (one thread)",
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "rules": [r.name for r in make_rules().rules],
                    "tokens": "2-6 chars each (mean 4), deterministic synthetic answer (seed 0)",
                    "baseline": f"fresh copy fed the whole text so far at every token up to {ns.full_max} tokens; "
                                f"above, {ns.samples} checks spread evenly (us/token = mean check cost)"},
           "rows": rows}
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", out)
    return doc


if __name__ == "__main__":
    main()
