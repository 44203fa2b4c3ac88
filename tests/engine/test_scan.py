"""`l0 scan` over recorded real outputs (tests/data) and over bad input."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from l0.cli import scan_lines
from l0.engine.config import DetectorParams

DATA = Path(__file__).resolve().parents[1] / "data" / "smollm2_labelled.jsonl"


def test_scan_reports_each_line_and_bad_lines():
    lines = [json.dumps({"id": "a", "token_ids": [1, 2, 4] * 3 + [1]}),
             "not json",
             json.dumps({"id": "b", "token_ids": [1, 2, "x"]}),
             json.dumps([1, 2]),
             json.dumps({"token_ids": [5, 6, 7]})]
    out = io.StringIO()
    prm = DetectorParams(max_period=8, min_span=6, near_min_repeats=0)
    bad = scan_lines(lines, prm, out)
    res = [json.loads(x) for x in out.getvalue().splitlines()]
    assert bad == 3
    assert res[0] == {"id": "a", "fired": True, "at": 9, "kind": "loop", "period": 3}
    assert res[1]["line"] == 2 and "error" in res[1]
    assert res[2] == {"line": 3, "error": "token_ids must be a list of non-negative integers"}
    assert res[3] == {"line": 4, "error": "line is not a JSON object"}
    assert res[4] == {"id": None, "fired": False, "at": None, "kind": None, "period": None}


def test_scan_cli_on_recorded_outputs():
    """Server defaults, no tokenizer classes: every exact-loop runaway fires."""
    proc = subprocess.run([sys.executable, "-m", "l0.cli", "scan", str(DATA), "--near-min-repeats", "0"],
                          capture_output=True, text=True, check=True)
    res = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    rows = [json.loads(x) for x in DATA.read_text().splitlines()]
    assert len(res) == len(rows)
    assert res["p20"] == {"id": "p20", "fired": True, "at": 25, "kind": "loop", "period": 2}
    assert res["p01"]["fired"] is False


def test_scan_cli_rejects_bad_option():
    proc = subprocess.run([sys.executable, "-m", "l0.cli", "scan", "-", "--min-repeats", "99"],
                          input="", capture_output=True, text=True)
    assert proc.returncode == 2 and "l0_min_repeats=99 is out of range" in proc.stderr


HOLDOUT = DATA.parent / "smollm2_holdout.jsonl"
# Held-out outputs (never used to choose defaults) where the server defaults
# disagree with the label. Pinned so the list can only shrink (docs/limits.md):
# h27 "Write the alphabet backwards." 25 lines "X: Reverse the alphabet
# backwards to make it easier to remember the alphabet backwards." that the
# model ends at Y by itself (a near-loop L0 cuts at token 332); h28 "Give me 20
# random words." = "1. 20 / 2. 20 / ..." to max_tokens: digits and punctuation
# only, the shape of counting, which near-loops must let through.
HOLDOUT_FIRED_FINISHED = {"h27"}
HOLDOUT_MISSED_RUNAWAY = {"h28"}


@pytest.mark.vllm
def test_scan_with_the_model_tokenizer_matches_the_labels():
    """Server defaults and the model's token classes, on every recorded output:
    the labelled set exactly (every runaway fires, no finished output does),
    the held-out set up to the pinned disagreements."""
    from l0.engine.models import prepare_smollm2

    model = prepare_smollm2()
    res = {}
    for path in (DATA, HOLDOUT):
        proc = subprocess.run([sys.executable, "-m", "l0.cli", "scan", str(path), "--tokenizer", str(model)],
                              capture_output=True, text=True, check=True)
        res.update({r["id"]: r for r in map(json.loads, proc.stdout.splitlines())})
    rows = [json.loads(x) for p in (DATA, HOLDOUT) for x in p.read_text().splitlines()]
    assert len(res) == len(rows) == 88
    wrong_fired = {r["id"] for r in rows if r["label"] == "finished" and res[r["id"]]["fired"]}
    missed = {r["id"] for r in rows if r["label"] == "runaway" and not res[r["id"]]["fired"]}
    assert wrong_fired == HOLDOUT_FIRED_FINISHED
    assert missed == HOLDOUT_MISSED_RUNAWAY
    # The Pluto list: a near-loop of period 5 ("\nNN. Pluto"), replaced from token 237.
    assert res["p00"] == {"id": "p00", "fired": True, "at": 237, "kind": "near_loop", "period": 5}
    # The template loop (rounds of "In <language>, ... 1. <language>: ..." of
    # varying length): no fixed period, caught by echo.
    assert res["p43"] == {"id": "p43", "fired": True, "at": 576, "kind": "echo", "period": 29}
