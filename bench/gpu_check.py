"""``make gpu-check``: prove L0's device path on a GPU in a few minutes, without vLLM.

Runs with the machine's own ``python3`` (torch with CUDA, CuPy, pytest,
hypothesis, nvidia-ml-py; no venv, no installs). Parts, each time-boxed:

1. tests (pytest, markers gpu/nvml required, so nothing skips silently):
   the detect differential tests (reference vs torch-on-CUDA vs the CUDA
   kernel, hypothesis + adversarial, and at batch 1/64/256 x max_period
   64/512/2048/4096), the step core on CUDA vs the CPU core (float32 and
   bfloat16, vocab 49152 and 152064) under ``set_sync_debug_mode("error")``
   on a non-default stream, launch ordering on the current stream, and the
   real NVML source;
2. bench: one detect step at B = 1, 64, 256 x P = 512, 2048, CUDA kernel vs
   torch backend (device time by CUDA events after warm-up, host time per
   call, kernels per step from the profiler); the step core's whole ``step``
   at B = 1, 64, 256 on vocab-152064 logits, the V1 way (host token lists
   uploaded) and the V2 way (tokens read on the device, rows shuffled);
   vLLM's own check can't run
   here (no vLLM on the image: see the JSON);
3. compute-sanitizer memcheck and racecheck over the CUDA kernel, if the
   tool is there and time is left.

Writes ``bench/results/gpu_check_<device>.json`` (and pytest's JUnit XML
files next to it) and prints a one-screen summary. Exit 0 only when every test
passed; 2 when there is no CUDA device (said plainly).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

# The pieces: what a CPU test checks imports and collects without a GPU.
TEST_FILES = ("tests/engine/ops/test_act.py", "tests/engine/test_step.py", "tests/engine/test_jsonstate.py", "tests/engine/ops/test_detect.py",
              "tests/engine/health/test_nvml.py", "tests/engine/ops/test_detect_scale.py")
BUDGET_S = 330  # the whole check, under the 6 minutes it is given
TEST_BUDGET_S = 230
BENCH_BATCHES = (1, 64, 256)
BENCH_PERIODS = (512, 2048)
STEP_VOCAB = 152064
NO_DEVICE = "gpu-check: no CUDA device here ({why}); run make gpu-check on a machine with an NVIDIA GPU"


def cuda_missing() -> str | None:
    """Why the check can't run here, or None."""
    try:
        import torch
    except Exception as exc:
        return f"torch is not importable: {exc}"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return None


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def device_info() -> dict:
    import torch
    props = torch.cuda.get_device_properties(0)
    info = {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "host": platform.node()}
    try:
        import cupy
        info["cupy"] = cupy.__version__
    except Exception as exc:
        info["cupy"] = f"missing: {exc}"
    try:
        import pynvml
        pynvml.nvmlInit()
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception as exc:
        info["driver"] = f"unknown: {exc}"
    info["c_compiler"] = shutil.which(os.environ.get("CC", "cc"))
    return info


# -- 1. tests -------------------------------------------------------------------

# Each file runs in its own pytest process with its own time box, so a hang
# or a crash in one loses only that file's results.
FILE_BUDGET_S = {"tests/engine/ops/test_detect.py": 45, "tests/engine/ops/test_act.py": 45, "tests/engine/test_step.py": 60,
                 "tests/engine/test_jsonstate.py": 40, "tests/engine/health/test_nvml.py": 20, "tests/engine/ops/test_detect_scale.py": 150}


def required_markers() -> str:
    """gpu and nvml always; smollm2 (the JSON tracker with SmolLM2's
    tokenizer) when a tokenizer is there: ``L0_TOKENIZER_JSON`` (carry the
    file along) or the converted model. Without one that test is skipped and
    the summary says so."""
    from pathlib import Path as _P
    tok = os.environ.get("L0_TOKENIZER_JSON")
    cached = _P.home() / ".cache" / "l0" / "smollm2-135m-instruct" / "tokenizer.json"
    return "gpu,nvml,smollm2" if (tok and _P(tok).is_file()) or cached.is_file() else "gpu,nvml"


def run_tests(out_dir: Path, deadline: float, extra: list[str]) -> dict:
    import importlib.util
    env = dict(os.environ, L0_REQUIRE=required_markers(), PYTHONUNBUFFERED="1")
    per_test = ["-p", "timeout", "--timeout=120"] if importlib.util.find_spec("pytest_timeout") else []
    total = {"rc": 0, "wall_s": 0.0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [],
             "slowest": [], "files": {}}
    for i, test_file in enumerate(TEST_FILES):
        xml = out_dir / f"gpu_check_junit_{i}.xml"
        xml.unlink(missing_ok=True)
        budget = min(FILE_BUDGET_S[test_file], deadline - time.monotonic())
        if budget < 10:
            total["failures"].append({"test": test_file, "message": "not run: out of time"})
            total["rc"] = "incomplete"
            continue
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *per_test, f"--junitxml={xml}",
               test_file, *extra]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=budget, capture_output=True, text=True)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2500:]
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            rc, tail = "timeout", out[-2500:]
        res = _junit(xml)
        wall = round(time.perf_counter() - t0, 1)
        total["files"][test_file] = {"rc": rc, "wall_s": wall, "passed": res["passed"], "failed": res["failed"],
                                     "errors": res["errors"], "skipped": res["skipped"]}
        if rc not in (0,):
            total["files"][test_file]["output_tail"] = tail
            if total["rc"] == 0:
                total["rc"] = rc
        total["wall_s"] = round(total["wall_s"] + wall, 1)
        for k in ("passed", "failed", "errors", "skipped"):
            total[k] += res[k]
        if rc == "timeout":
            total["failures"].append({"test": test_file, "message": f"timed out after {budget:.0f} s: {tail[-300:]}"})
        elif rc != 0 and not res["failures"]:
            total["failures"].append({"test": test_file, "message": f"pytest rc {rc}: {tail[-400:]}"})
        else:
            total["failures"] += res["failures"]
        total["slowest"] = sorted(total["slowest"] + res["slowest"], key=lambda r: -r["s"])[:10]
    return total


def _junit(xml: Path) -> dict:
    if not xml.is_file():
        return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "slowest": [],
                "failures": [{"test": str(xml.name), "message": "no JUnit XML written"}]}
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, slowest = [], []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        slowest.append((float(case.get("time") or 0), name))
        kids = {c.tag: c for c in case}
        if "failure" in kids or "error" in kids:
            k = kids.get("failure", kids.get("error"))
            counts["failed" if "failure" in kids else "errors"] += 1
            failures.append({"test": name, "message": (k.get("message") or "")[:600]})
        elif "skipped" in kids:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    slowest.sort(reverse=True)
    return {**counts, "failures": failures, "slowest": [{"test": n, "s": round(t, 2)} for t, n in slowest[:8]]}


# -- 2. bench -------------------------------------------------------------------

def _events_ms(fn, steps: int) -> tuple[float, float]:
    """(device ms per call by CUDA events, host µs per call) after the caller's warm-up."""
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    start.record()
    for i in range(steps):
        fn(i)
    end.record()
    host_us = (time.perf_counter() - t0) / steps * 1e6
    end.synchronize()
    return start.elapsed_time(end) / steps, host_us


def _kernels_per_call(fn, calls: int = 10) -> float | None:
    """Kernels (and device copies) the profiler sees per call, CuPy's included."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(calls):
                fn(i)
            torch.cuda.synchronize()
        n = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
        return n / calls
    except Exception:
        return None


def bench_detect(steps: int = 200) -> list[dict]:
    import torch
    from l0.engine.config import DetectorParams
    from l0.engine.ops import make_detector
    from l0.engine.vocab import TokenClasses
    vocab = 49152
    classes = TokenClasses(content=None, blank=[i in (220, 198) for i in range(vocab)],
                           number=[i % 10 == 0 for i in range(vocab)])
    rows = []
    for B in BENCH_BATCHES:
        for P in BENCH_PERIODS:
            row = {"batch": B, "max_period": P}
            for backend in ("cuda", "torch"):
                det = make_detector(B, P, classes, device="cuda", backend=backend)
                for s in range(B):
                    det.configure(s, DetectorParams(max_period=P))
                g = torch.Generator(device="cuda").manual_seed(0)
                toks = torch.randint(0, vocab, (256 + steps, B), device="cuda", generator=g)
                for t in range(256):  # warm-up and history (the step cost does not depend on it)
                    det.step(toks[t])
                dev_ms, host_us = _events_ms(lambda i: det.step(toks[256 + i]), steps)
                row[f"{backend}_device_us"] = round(dev_ms * 1e3, 2)
                row[f"{backend}_host_us"] = round(host_us, 2)
                row[f"{backend}_kernels_per_step"] = _kernels_per_call(lambda i: det.step(toks[i]))
            row["torch_over_cuda_device"] = round(row["torch_device_us"] / row["cuda_device_us"], 2)
            rows.append(row)
    return rows


def _json_tables(vocab: int):
    """JSON tables for a synthetic vocabulary (JSON pieces cycling over the
    ids): the close-mode bench needs the tracker and the bias, not a model."""
    from l0.engine import jsonstate
    pieces = ['{', '}', '[', ']', '"', ',', ':', ' ', 'ab', '12', '"}', '},{"', ', "', 'null', '\n  ']
    return jsonstate.tables_from_texts([pieces[i % len(pieces)] for i in range(vocab)])


def bench_step(steps: int = 100) -> list[dict]:
    """The step core's whole step (token upload, detect, act, readout) on
    CUDA logits of vocab 152064, all rows tracked, a quarter of them looping;
    and (``cuda_closing``) the same with every row a JSON answer closing at
    its budget: the tracker and the close bias over the vocabulary."""
    import torch
    from l0.engine.config import DetectorParams, RequestOptions
    from l0.engine.step import StepCore
    tables = _json_tables(STEP_VOCAB)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for B in BENCH_BATCHES:
            row = {"batch": B, "vocab": STEP_VOCAB, "dtype": str(dtype).replace("torch.", "")}
            logits = torch.randn(B, STEP_VOCAB, device="cuda").to(dtype)
            logits[:, 2] = float("-inf")  # the stop token masked (an open JSON answer)
            base = logits.clone()
            for name, backend, closing in (("cuda", "cuda", False), ("torch", "torch", False),
                                           ("cuda_closing", "cuda", True)):
                events = []
                core = StepCore(B, max_period=512, device="cuda", backend=backend, on_event=events.append,
                                json=tables if closing else None)
                outs = [[] for _ in range(B)]
                opts = RequestOptions("stop", DetectorParams(), None, 10.0)
                for s in range(B):
                    core.add(s, opts, outs[s], prompt_ids=[1, 2, 3], stop_token=2, json=closing,
                             max_tokens=4 if closing else -1)

                def one(i):
                    for s in range(B):
                        # 15 * k + 8: the piece "ab" (a value: the JSON tracker keeps following)
                        outs[s].append(15 * (100 + (i % 7 if s % 4 == 0 else (i * 7919 + s) % 9000)) + 8)
                    logits.copy_(base)
                    core.step(logits)
                for i in range(30):
                    one(i)
                dev_ms, host_us = _events_ms(lambda i: one(30 + i), steps)
                # The copy of the logits is part of the loop above: time it alone to subtract.
                copy_ms, _ = _events_ms(lambda i: logits.copy_(base), steps)
                row[f"{name}_device_us"] = round((dev_ms - copy_ms) * 1e3, 2)
                row[f"{name}_host_us"] = round(host_us, 2)
                row[f"{name}_kernels_per_step"] = _kernels_per_call(lambda i: core.step(logits))
                core.flush()
                row[f"{name}_interventions"] = len(events)
            row.update(_bench_step_v2(B, dtype, logits, base, steps))
            rows.append(row)
    return rows


def _bench_step_v2(B: int, dtype, logits, base, steps: int) -> dict:
    """The V2 adapter's step on the same logits: tokens read on the device
    from a ``[B, 4096]`` int32 buffer with a per-slot length (Model Runner
    V2's ``all_token_ids``/``total_len``) by SlotTokens, rows in a shuffled
    order (``expanded_idx_mapping``), StepCore.step_rows; nothing uploaded.
    The "model runner" part of the loop (the logits copy, writing each
    slot's sampled token and length) is timed alone and subtracted."""
    import torch
    from l0.engine.config import DetectorParams, RequestOptions
    from l0.engine.slot_tokens import SlotTokens
    from l0.engine.step import StepCore
    dev = torch.device("cuda")
    events = []
    core = StepCore(B + 1, max_period=512, device=dev, backend="cuda", on_event=events.append)
    feed = SlotTokens(B + 1, 1, dev)
    ids = torch.zeros(B, 4096, dtype=torch.int32, device=dev)
    total = torch.full((B,), 3, dtype=torch.int32, device=dev)
    row_slot = torch.randperm(B, device=dev)
    present = row_slot.tolist()
    opts = RequestOptions("stop", DetectorParams(), None, 10.0)
    for s in range(B):
        core.add(s, opts, None, prefix=ids[s, :0].to(torch.int64), stop_token=2)
        feed.follow(s, 3)
    slots = torch.arange(B, device=dev)
    loopers = (slots % 4 == 0)

    def commit(i):  # the model runner's post_update: one sampled token per slot
        tok = torch.where(loopers, 15 * (100 + i % 7) + 8, 15 * (100 + (i * 7919 + slots) % 9000) + 8)
        ids.scatter_(1, total.long()[:, None], tok.to(torch.int32)[:, None])
        total.add_(1)
        logits.copy_(base)

    def one(i):
        commit(i)
        core.step_rows(logits, feed(ids, total), row_slot, present)
    for i in range(30):
        one(i)
    dev_ms, host_us = _events_ms(lambda i: one(30 + i), steps)
    other_ms, other_us = _events_ms(lambda i: commit(30 + steps + i), steps)
    out = {"cuda_v2_device_us": round((dev_ms - other_ms) * 1e3, 2),
           "cuda_v2_host_us": round(host_us - other_us, 2),
           "cuda_v2_kernels_per_step": _kernels_per_call(
               lambda i: core.step_rows(logits, feed(ids, total), row_slot, present))}
    core.flush()
    out["cuda_v2_interventions"] = len(events)
    return out


# -- 3. compute-sanitizer --------------------------------------------------------

def sanitize_target() -> None:
    """A short workload for compute-sanitizer: the detect kernel at odd and
    even periods (300 is no multiple of the 256-thread block), every ring
    wrapped; the act kernel in every dtype with stops, penalties and close
    mode."""
    import torch
    sys.path.insert(0, str(ROOT / "tests" / "ops"))
    import detect_streams as ds
    from l0.engine.ops import make_detector
    for n, P in ((9, 300), (8, 512)):
        streams, ops, T = ds.batch(n, P)
        det = make_detector(n, P, ds.classes(), device="cuda", backend="cuda")
        for s in range(n):
            det.configure(s, *ds.params_for(s, P))
        toks = torch.tensor(streams, dtype=torch.int64).t().contiguous().cuda()
        for t in range(min(T, 2 * P + 50)):
            ds.apply_ops(det, ops.get(t, []), P)
            det.step(toks[t])
    # The act kernel, every dtype, close mode included (rows closing from the start).
    from l0.engine.config import DetectorParams, RequestOptions
    from l0.engine.step import StepCore
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        B, V = 5, 4099
        core = StepCore(B, max_period=64, device="cuda", backend="cuda", json=_json_tables(V),
                        on_event=lambda e: None)
        outs = [[] for _ in range(B)]
        for s in range(B):
            core.add(s, RequestOptions(["stop", "penalize"][s % 2], DetectorParams(max_period=64, min_span=1), None,
                                       5.0), outs[s], stop_token=[2, -1, 7][s % 3], json=s % 2 == 0,
                     max_tokens=[4, -1, 40][s % 3])
        for t in range(80):
            for s in range(B):
                outs[s].append(15 * (10 + t % (s + 1)) + 8)
            core.step(torch.randn(B, V, device="cuda").to(dtype))
    torch.cuda.synchronize()
    print("sanitize target done")


def run_sanitizer(tool: str, timeout_s: float) -> dict:
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        return {"tool": tool, "ran": False, "why": "compute-sanitizer not on PATH"}
    cmd = [exe, "--tool", tool, "--error-exitcode", "9", sys.executable,
           str(Path(__file__).resolve()), "--sanitize-target"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "ran": False, "why": f"timed out after {timeout_s:.0f} s"}
    out = proc.stdout + proc.stderr
    summary = [ln for ln in out.splitlines() if "ERROR SUMMARY" in ln or "RACECHECK SUMMARY" in ln]
    return {"tool": tool, "ran": True, "rc": proc.returncode, "clean": proc.returncode == 0 and
            "sanitize target done" in out, "summary": summary[-1] if summary else None,
            "wall_s": round(time.perf_counter() - t0, 1), "output_tail": out[-1500:]}


# -- driver ---------------------------------------------------------------------

def summary(report: dict) -> str:
    d, t = report["device"], report["tests"]
    lines = [f"gpu-check on {d['name']} (cc {d['capability']}, torch {d['torch']}, CUDA {d['cuda']}, "
             f"CuPy {d['cupy']}, driver {d['driver']})",
             f"tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped "
             f"in {t['wall_s']} s (rc {t['rc']})"]
    for f in t["failures"][:6]:
        lines.append(f"  FAIL {f['test']}: {f['message'][:160]}")
    if report.get("bench_detect"):
        lines.append("detect step, µs (device by CUDA events | host per call | kernels per step):")
        lines.append(f"  {'B':>4} {'P':>5}  {'cuda dev':>9} {'host':>7} {'k':>4}  {'torch dev':>9} {'host':>7} "
                     f"{'k':>5}  torch/cuda")
        for r in report["bench_detect"]:
            lines.append(f"  {r['batch']:>4} {r['max_period']:>5}  {r['cuda_device_us']:>9} {r['cuda_host_us']:>7} "
                         f"{r['cuda_kernels_per_step'] or '-':>4}  {r['torch_device_us']:>9} "
                         f"{r['torch_host_us']:>7} {r['torch_kernels_per_step'] or '-':>5}  "
                         f"{r['torch_over_cuda_device']}")
    if report.get("bench_step"):
        lines.append(f"step core, whole step on vocab-{STEP_VOCAB} logits, µs (device | host):")
        for r in report["bench_step"]:
            lines.append(f"  {r['dtype']:>8} B={r['batch']:>3}  cuda {r['cuda_device_us']:>8} | "
                         f"{r['cuda_host_us']:>7}   torch {r['torch_device_us']:>8} | {r['torch_host_us']:>7}"
                         + (f"   cuda closing {r['cuda_closing_device_us']:>8} | {r['cuda_closing_host_us']:>7}"
                            if "cuda_closing_device_us" in r else "")
                         + (f"   cuda V2 {r['cuda_v2_device_us']:>8} | {r['cuda_v2_host_us']:>7}"
                            if "cuda_v2_device_us" in r else ""))
    for s in report.get("sanitizer", []):
        lines.append(f"compute-sanitizer {s['tool']}: " + (f"clean={s['clean']} {s.get('summary') or ''}"
                                                           if s.get("ran") else f"not run ({s['why']})"))
    for e in report.get("errors", []):
        lines.append(f"ERROR {e}")
    lines.append(f"wall {report['wall_s']} s; wrote {report['path']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-sanitizer", action="store_true")
    ap.add_argument("--tools", default="memcheck,racecheck", help="compute-sanitizer tools to run")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="the whole check's time budget")
    ap.add_argument("--sanitize-target", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k scale)")
    ns = ap.parse_args(argv)
    why = cuda_missing()
    if why is not None:
        print(NO_DEVICE.format(why=why), file=sys.stderr)
        return 2
    if ns.sanitize_target:
        sanitize_target()
        return 0
    t0 = time.perf_counter()
    out_dir = Path(ns.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = device_info()
    report = {"device": info, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "errors": [],
              "vllm_check": "not run: vLLM is not installed on the GPU image. vLLM's repetition check runs "
                            "in host Python in its scheduler, off the GPU: bench/results/bench_detect.json "
                            "has it side by side with L0 on the CPU machine."}
    path = out_dir / f"gpu_check_{slug(info['name'])}.json"
    report["path"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    if ns.skip_tests:
        report["tests"] = {"rc": "skipped", "wall_s": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0,
                           "failures": []}
    else:
        report["tests"] = run_tests(out_dir, time.monotonic() + min(TEST_BUDGET_S, ns.budget_s - 75),
                                    ns.pytest_args)
        path.write_text(json.dumps(report, indent=1) + "\n")  # what we have so far, in case of a kill
    left = lambda: ns.budget_s - (time.perf_counter() - t0)  # noqa: E731
    if not ns.skip_bench:
        for name, fn in (("bench_detect", bench_detect), ("bench_step", bench_step)):
            if left() < 30:
                report["errors"].append(f"{name} skipped: {left():.0f} s left of the budget")
                continue
            try:
                report[name] = fn()
            except Exception as exc:  # a bench failure is reported, the check goes on
                report["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            path.write_text(json.dumps(report, indent=1) + "\n")
    report["sanitizer"] = []
    if not ns.skip_sanitizer:
        for tool in [t for t in ns.tools.split(",") if t]:
            if left() < 40:
                report["sanitizer"].append({"tool": tool, "ran": False, "why": "out of time budget"})
                continue
            report["sanitizer"].append(run_sanitizer(tool, min(90, left() - 10)))
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(summary(report))
    t = report["tests"]
    ok = t["rc"] in (0, "skipped") and not t["failed"] and not t["errors"]
    ok = ok and all(s.get("clean", True) for s in report["sanitizer"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
