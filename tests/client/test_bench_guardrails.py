"""bench/bench_guardrails.py runs (tiny sizes) and writes what docs/benchmarks.md reads.
No timing assertions: timings are the bench's job."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    name = "bench_guardrails_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "bench_guardrails.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # registered before exec: dataclasses look the module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def test_bench_tiny_run(tmp_path):
    bench = load_bench()
    out = tmp_path / "bench_guardrails.json"
    doc = bench.main(["--sizes", "100,1000", "--rounds", "1", "--full-max", "100", "--samples", "20",
                      "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert set(doc) == {"meta", "rows"}
    assert {"host", "cpu", "python", "when", "rules", "baseline"} <= set(doc["meta"])
    assert [r["tokens"] for r in doc["rows"]] == [100, 1000]
    keys = {"tokens", "chars", "l0_us_per_token", "l0_first10_us_per_token", "l0_last10_us_per_token",
            "l0_flatness_last_over_first", "baseline_us_per_token", "baseline_mode", "baseline_checks",
            "ratio_baseline_over_l0", "violations_l0", "violations_baseline", "same_violations"}
    for row in doc["rows"]:
        assert keys <= set(row)
        assert row["same_violations"] and row["violations_l0"] == row["violations_baseline"]
        assert row["l0_us_per_token"] > 0 and row["baseline_us_per_token"] > 0
    assert doc["rows"][0]["baseline_mode"] == "every token" and doc["rows"][0]["baseline_checks"] == 100
    assert doc["rows"][1]["baseline_mode"].startswith("sampled") and doc["rows"][1]["baseline_checks"] == 20


def test_stream_is_deterministic_and_tokenised():
    bench = load_bench()
    a, b = bench.make_tokens(500), bench.make_tokens(500)
    assert a == b and len(a) == 500 and all(2 <= len(t) <= 6 for t in a)
    text = "".join(bench.make_tokens(3000))
    for marker in ("```json", "```python", "\\begin{align}", "$$", "|---|", "## "):
        assert marker in text


def test_incremental_and_rescan_agree_on_violations():
    bench = load_bench()
    bad = ("As an AI language model, here is [insert name]. <|im_end|>\n| a | b |\n|---|---|\n| 1 |\n"
           "\\begin{align} x \\end{cases} " + "Again and again we say the same thing here. " * 3 + "```\nopen")
    tokens = bench.make_tokens(300) + [bad[i:i + 4] for i in range(0, len(bad), 4)]
    inc = bench.run_incremental(tokens)["violations"]
    base = bench.run_baseline(tokens, full_max=10_000, samples=10)["violations"]
    assert inc == base
    assert {v[0] for v in inc} >= {"pattern:meta_commentary", "pattern:placeholder", "pattern:special_tokens",
                                   "markdown", "latex", "drift:repetition"}
