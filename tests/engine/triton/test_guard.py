"""The Triton step's stream logic, without Triton: cuts equal the reference
spec's, chunking never changes a verdict, options are validated."""
import json
import random

import pytest

from l0.engine.config import OptionError, ServerConfig
from l0.engine.ops.detect_reference import scan
from l0.engine.triton.guard import ERR_PENALIZE, StreamGuard, StreamTable, parse_options

SERVER = ServerConfig(action="stop")


def _loop(prefix_len=40, period=7, total=200, seed=1):
    rng = random.Random(seed)
    prefix = [rng.randrange(1000, 30000) for _ in range(prefix_len)]
    cycle = [rng.randrange(1000, 30000) for _ in range(period)]
    return prefix + [cycle[i % period] for i in range(total - prefix_len)]


def _feed_chunked(guard, tokens, rng):
    passed, verdicts, i = [], [], 0
    while i < len(tokens):
        k = rng.randint(1, 9)
        chunk = tokens[i:i + k]
        n, v = guard.feed(chunk)
        passed += chunk[:n]
        if v:
            verdicts.append(v)
        i += k
    return passed, verdicts


@pytest.mark.parametrize("backend", ["reference", "torch", "cpu"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stop_cuts_where_the_spec_fires_whatever_the_chunking(backend, seed):
    if backend == "cpu":
        from l0.engine.ops import detect_cpu
        if not detect_cpu.available():
            pytest.skip("no C compiler")
    tokens = _loop(period=3 + seed * 5, seed=seed)
    opts = parse_options(None, SERVER)
    at, kind, period = scan(tokens, opts.params, SERVER.max_period_cap)
    guard = StreamGuard(opts, SERVER.max_period_cap, backend=backend)
    passed, verdicts = _feed_chunked(guard, tokens, random.Random(seed))
    assert passed == tokens[:at]  # up to and including the trigger token
    assert len(verdicts) == 1 and verdicts[0].token_index == at - 1 and verdicts[0].period == period
    assert verdicts[0].kind == "loop" and verdicts[0].action == "stop"
    assert json.loads(verdicts[0].to_json())["token_index"] == at - 1
    assert guard.feed([1, 2, 3]) == (0, None)  # stopped: nothing more passes


def test_observe_passes_everything_and_reports_once():
    tokens = _loop()
    guard = StreamGuard(parse_options('{"l0_action": "observe"}', SERVER), 512, backend="reference")
    passed, verdicts = _feed_chunked(guard, tokens, random.Random(5))
    assert passed == tokens and len(verdicts) == 1 and verdicts[0].action == "observe"


def test_a_normal_stream_is_untouched():
    rng = random.Random(9)
    tokens = [rng.randrange(1000, 30000) for _ in range(500)]
    guard = StreamGuard(parse_options(None, SERVER), 512, backend="reference")
    passed, verdicts = _feed_chunked(guard, tokens, rng)
    assert passed == tokens and verdicts == []


def test_off_passes_without_a_detector():
    guard = StreamGuard(parse_options({"l0_action": "off"}, SERVER), 512)
    assert guard.feed(_loop()) == (200, None) and guard._det is None


@pytest.mark.parametrize("raw, needle", [
    ('{"l0_min_repeats": 9999}', "l0_min_repeats=9999 is out of range"),
    ('{"l0_action": "penalize"}', "needs the LLM's logits"),
    ('{"l0_bogus": 1}', "unknown option 'l0_bogus'"),
    ('{"temperature": 1}', "unknown option 'temperature'"),
    ('[1, 2]', "must be a JSON object"),
    ('{not json', "must be a JSON object"),
])
def test_bad_options_name_the_option(raw, needle):
    with pytest.raises(OptionError, match=None) as err:
        parse_options(raw, SERVER)
    assert needle in str(err.value)
    assert ERR_PENALIZE.startswith("l0: option l0_action='penalize'")


def test_table_keys_streams_and_evicts_idle_and_excess():
    t = [0.0]
    made = []

    def make(opts):
        made.append(opts)
        return StreamGuard(opts, 64, backend="reference")
    table = StreamTable(make, idle_s=10, max_streams=2, clock=lambda: t[0])
    opts = lambda: parse_options(None, SERVER)  # noqa: E731
    a = table.get("a", opts)
    assert table.get("a", opts) is a and len(made) == 1
    table.get("b", opts)
    table.get("c", opts)  # over max_streams: "a" (least recent) goes
    assert len(table) == 2 and table.get("a", opts) is not a
    t[0] = 11.0
    table.get("d", opts)  # b, c and the new a are idle > 10 s
    assert len(table) == 1
    with pytest.raises(OptionError):
        table.get("e", lambda: parse_options('{"l0_x": 1}', SERVER))
    assert len(table) == 1  # a refused stream is not kept


def test_without_torch_auto_is_the_reference_and_torch_backends_say_so():
    """Triton's Python environment for L0's models has no torch: ``auto`` must
    fall back to the plain-Python reference there (seen: the lazy detector
    factory imported fine and torch failed only when a detector was made)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "from l0.engine.triton.guard import make_stream_detector\n"
            "print(type(make_stream_detector(8, None, 'cpu', 'auto')).__name__)\n"
            "try:\n    make_stream_detector(8, None, 'cpu', 'cpu')\n"
            "except RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["ReferenceDetector", "l0: detect backend 'cpu' needs torch (import of torch halted; "
                                "None in sys.modules)"]
