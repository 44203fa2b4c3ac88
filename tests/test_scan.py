"""`l0 scan` over recorded real outputs (tests/data) and over bad input."""
import io
import json
import subprocess
import sys
from pathlib import Path

from l0.cli import scan_lines
from l0.config import DetectorParams

DATA = Path(__file__).resolve().parent / "data" / "smollm2_labelled.jsonl"


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
