"""Chaos over a replica fleet: ``l0 serve`` replicas on loopback sharing one
real Redis, many concurrent greedy streams through the L0 client
(``l0.wrap(AsyncOpenAI)``, the other replicas as fallbacks), and a seeded
schedule of real faults:

* ``kill``: SIGKILL of a replica's whole process group (then restarted);
* ``freeze``: SIGSTOP of a replica's engine processes for a while, then
  SIGCONT (the decode loop frozen, the HTTP server up);
* ``xid``: a scripted Xid 79 on a replica (fatal: it drains; restarted);
* ``redis_restart``: Redis killed (SIGKILL: a crash) and started again at once;
* ``redis_outage``: Redis down for ``--outage-s`` seconds (stopped, then started);
* ``cut``: every stream through a replica's proxy cut mid-answer.

Redis runs as production runs it (``appendonly yes``, ``appendfsync
everysec``; ``--no-persist``: none, as before). The streams share one
:class:`l0.Fleet` (cooldowns and health checks, as one application's client
would) and the default time budget of streams on L0 servers (``Retry.deadline_s``).
Every stream's final token ids are compared with an uninterrupted reference
run of the same request. Prints and writes ``bench/results/chaos.json``:
streams started / completed / identical / lost / duplicated tokens / errors
surfaced to the caller, per fault type (with the resumes that followed, by
mode); p50/p99 of the gap from a fault to the stream's next delivered token;
waits for the fleet; each replica's health timeline.

    .venv/bin/python bench/chaos.py                      # 100+ faults
    .venv/bin/python bench/chaos.py --faults 8 --concurrency 8 --out /tmp/chaos.json   # CI-sized
"""
from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from harness import Run, proc_tree, write_result  # noqa: E402

FAULTS = ("kill", "freeze", "xid", "redis_restart", "redis_outage", "cut")
ARGS = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--max-num-seqs", "32", "--seed", "0"]


@dataclass
class Stream:
    n: int
    prompt: int
    primary: int
    started: float = 0.0
    ended: float = 0.0
    ids: list = field(default_factory=list)
    text: str = ""
    times: list = field(default_factory=list)       # arrival time of each delivered chunk with tokens
    failures: list = field(default_factory=list)    # (time, endpoint name, "category: error")
    resumes: list = field(default_factory=list)     # (time, mode)
    waits: int = 0                                  # times it waited for the fleet (every replica cooling down)
    steps: list = field(default_factory=list)       # (time, event type): the client's moves, for the gap's parts
    endpoints: list = field(default_factory=list)   # each attempt's endpoint, in order
    error: str | None = None


class Replica:
    def __init__(self, i: int, model: str, tmp: Path, redis_url: str, stall_s: float,
                 step_tokens: int | None = None) -> None:
        from faultproxy import FaultProxy
        from l0.engine.server import Server

        self.i = i
        self.script = tmp / f"telemetry-{i}.json"
        self.script.write_text(json.dumps({"gpus": [{"index": 0, "name": f"scripted GPU {i}"}]}))
        cfg = tmp / "l0.yaml"
        cfg.write_text(f"l0:\n  action: stop\n  health:\n    stall_timeout_s: {stall_s}\n    retry_after_s: 1\n")
        env = {"L0_CONFIG": str(cfg), "L0_CHECKPOINT_STORE": redis_url, "L0_TELEMETRY_SCRIPT": str(self.script),
               "L0_STATUS_DIR": str(tmp / f"status-{i}"), "VLLM_CPU_KVCACHE_SPACE": "1"}
        args = ARGS + (["--max-num-batched-tokens", str(step_tokens)] if step_tokens else [])
        self.server = Server(model, args, env=env, log_path=tmp / f"replica-{i}.log", startup_timeout=600)
        self.proxy = FaultProxy(self.server.port).start()
        self.up = False
        self.busy = False           # a fault or a restart in progress
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.proxy.url

    def start(self) -> None:
        self.script.write_text(json.dumps({"gpus": [{"index": 0, "name": f"scripted GPU {self.i}"}]}))
        self.server.start()
        self.up = True

    def engine_pids(self) -> list[int]:
        """The replica's processes but its HTTP server (engine core, workers)."""
        return [p.pid for p in proc_tree(self.server.proc.pid)[1:]]


class Chaos(Run):
    def __init__(self, ns) -> None:
        super().__init__()
        self.ns = ns
        self.rng = random.Random(ns.seed)
        self.faults: list[dict] = []
        self.health: dict[int, list] = {}
        self.stop_polling = threading.Event()

    # -- setup ---------------------------------------------------------------
    def setup(self, tmp: Path) -> None:
        from l0.engine.models import prepare_smollm2
        from services import RedisProcess

        self.model = str(prepare_smollm2())
        import l0

        self.redis = RedisProcess(tmp, persist=not self.ns.no_persist).start()
        self.fleet = l0.Fleet()   # one application's view of the replicas, shared by its streams
        self.redis_up = True
        self.replicas = [Replica(i, self.model, tmp, self.redis.url, self.ns.stall_s, self.ns.step_tokens)
                         for i in range(self.ns.replicas)]
        threads = [threading.Thread(target=r.start) for r in self.replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        prompts = json.loads((ROOT / "tests" / "data" / "prompts.json").read_text())
        self.prompts = [p["prompt"] if isinstance(p, dict) else p for p in prompts][: self.ns.prompts]
        self.log(f"{len(self.replicas)} replicas up, {len(self.prompts)} prompts")

    def teardown(self) -> None:
        self.stop_polling.set()
        for r in self.replicas:
            r.proxy.stop()
            r.server.stop()
        self.redis.stop()

    # -- the client ------------------------------------------------------------
    def client(self, primary: int, on_event):
        import l0
        from openai import AsyncOpenAI

        order = [(primary + k) % len(self.replicas) for k in range(len(self.replicas))]
        sdks = [AsyncOpenAI(base_url=self.replicas[j].url + "/v1", api_key="-", max_retries=0) for j in order]
        retry = l0.Retry(max_retries=3, attempts=3, wait=l0.backoff("fixed-jitter", 0.5, 2.0),
                         deadline_s=self.ns.deadline_s)
        return sdks, l0.wrap(sdks[0], fallbacks=sdks[1:], retry=retry, fleet=self.fleet,
                             timeout=l0.Timeouts(first_token_s=120.0, inter_token_s=self.ns.inter_token_s),
                             on_event=on_event)

    async def one(self, st: Stream) -> Stream:
        names = {}

        def on_event(e):
            if e.type in ("failure", "attempt_start", "first_token", "checkpoint_fetched", "wait", "fallback",
                          "retry_scheduled"):
                st.steps.append((time.monotonic(), e.type))
            if e.type == "failure":
                st.failures.append((time.monotonic(), names.get("endpoint"),
                                    f"{getattr(e, 'category', '')}: {getattr(e, 'error', '')}"[:200]))
            elif e.type == "attempt_start":
                names["endpoint"] = e.endpoint
                st.endpoints.append(e.endpoint)
            elif e.type == "resume":
                st.resumes.append((time.monotonic(), e.mode))
            elif e.type == "wait":
                st.waits += 1
        sdks, client = self.client(st.primary, on_event)
        st.started = time.monotonic()
        try:
            stream = await client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": self.prompts[st.prompt]}],
                max_tokens=self.ns.max_tokens, temperature=0.0, stream=True, extra_body={"return_token_ids": True})
            async for chunk in stream:
                if chunk.choices:
                    c = chunk.choices[0]
                    ids = getattr(c, "token_ids", None) or []
                    if ids or c.delta.content:
                        st.ids += ids
                        st.text += c.delta.content or ""
                        st.times.append(time.monotonic())
        except Exception as exc:  # noqa: BLE001 - every error surfaced to the caller is counted
            st.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            st.ended = time.monotonic()
            for s in sdks:
                await s.close()
        return st

    # -- faults ----------------------------------------------------------------
    def pick(self) -> tuple[str, int | None] | None:
        up = [r for r in self.replicas if r.up and not r.busy]
        choices = []
        for kind in self.ns.kinds:
            if kind in ("kill", "xid") and len([r for r in self.replicas if r.up and not r.busy]) < 2:
                continue  # keep one replica serving
            if kind in ("freeze", "cut", "kill", "xid") and not up:
                continue
            if kind.startswith("redis") and not self.redis_up:
                continue
            choices.append(kind)
        if not choices:
            return None
        if self.ns.cycle:  # the kinds in turn (a short run meets each one)
            want = self.ns.kinds[len(self.faults) % len(self.ns.kinds)]
            if want not in choices:
                return None
            kind = want
        else:
            kind = self.rng.choice(choices)
        target = self.rng.choice(up).i if kind in ("kill", "freeze", "xid", "cut") else None
        return kind, target

    def inject(self, kind: str, target: int | None) -> None:
        r = self.replicas[target] if target is not None else None
        at = time.monotonic()
        # the rest of the fleet healthy: every other replica up, serving, no fault or restart in progress
        healthy = all(x.up and not x.busy for x in self.replicas if x.i != target) and self.redis_up
        self.faults.append({"kind": kind, "replica": target, "at": at, "t": self.now(), "fleet_otherwise_healthy": healthy})
        self.log(f"fault {len(self.faults):3d}: {kind}" + (f" replica {target}" if r else ""))
        if kind == "kill":
            r.busy, r.up = True, False
            r.server.kill(signal.SIGKILL)
            threading.Thread(target=self._restart, args=(r, 1.0), daemon=True).start()
        elif kind == "freeze":
            r.busy = True
            pids = r.engine_pids()
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)

            def thaw():
                time.sleep(self.ns.freeze_s)
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                self._wait_healthy(r)
                r.busy = False
            threading.Thread(target=thaw, daemon=True).start()
        elif kind == "xid":
            r.busy = True
            r.script.write_text(json.dumps({"gpus": [{"index": 0, "name": f"scripted GPU {r.i}"}],
                                            "timeline": [{"at_s": 0, "gpu": 0, "xid": 79}]}))

            def replace():  # a fatal Xid latches FAILED: the replica is replaced (here: restarted)
                time.sleep(self.ns.xid_hold_s)
                r.up = False
                r.server.stop()
                self._restart(r, 0.0)
            threading.Thread(target=replace, daemon=True).start()
        elif kind == "redis_restart":
            self.redis.kill()
            self.redis.start()
        elif kind == "redis_outage":
            self.redis_up = False
            self.redis.stop()

            def back():
                time.sleep(self.ns.outage_s)
                self.redis.start()
                self.redis_up = True
            threading.Thread(target=back, daemon=True).start()
        elif kind == "cut":
            n = r.proxy.cut_now()
            self.faults[-1]["streams_cut"] = n

    def _restart(self, r: Replica, delay: float) -> None:
        time.sleep(delay)
        try:
            r.start()
        except Exception as exc:  # noqa: BLE001
            self.log(f"replica {r.i} failed to restart: {exc}")
            r.busy = False
            return
        self.log(f"replica {r.i} back")
        r.busy = False

    def _wait_healthy(self, r: Replica, limit_s: float = 60.0) -> None:
        import httpx
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(r.server.url + "/l0/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)

    def poll_health(self) -> None:
        import httpx
        last: dict[int, str] = {}
        while not self.stop_polling.is_set():
            for r in self.replicas:
                try:
                    resp = httpx.get(r.server.url + "/l0/health", timeout=1)
                    status = resp.json().get("status", "?")
                except Exception:  # noqa: BLE001
                    status = "down"
                if last.get(r.i) != status:
                    last[r.i] = status
                    self.health.setdefault(r.i, []).append([self.now(), status])
            self.stop_polling.wait(0.5)

    # -- the run ---------------------------------------------------------------
    async def reference(self) -> dict[int, list[int]]:
        """Each prompt once, no faults, at the run's concurrency, on replica 0."""
        ref, sem = {}, asyncio.Semaphore(self.ns.concurrency)

        async def go(p):
            async with sem:
                st = await self.one(Stream(-1, p, 0))
                if st.error:
                    raise RuntimeError(f"reference run failed: {st.error}")
                ref[p] = (st.ids, st.text)
        await asyncio.gather(*(go(p) for p in range(len(self.prompts))))
        return ref

    async def run(self) -> dict:
        self.log("reference run (no faults) ...")
        ref = await self.reference()
        again = await self.reference()
        unstable = sorted(p for p in ref if ref[p] != again[p])
        self.log(f"reference reproducible on {len(ref) - len(unstable)}/{len(ref)} prompts")
        threading.Thread(target=self.poll_health, daemon=True).start()
        streams: list[Stream] = []
        n = 0
        active: set[asyncio.Task] = set()
        faults_done = asyncio.Event()

        def recovering(st: Stream) -> bool:
            """Broken, not yet delivering again (nor ended)."""
            return not st.ended and bool(st.failures) and (not st.times or st.failures[-1][0] > st.times[-1])

        async def schedule():
            await asyncio.sleep(self.ns.warmup_s)
            while len(self.faults) < self.ns.faults:
                choice = self.pick()
                if choice is not None:
                    await asyncio.to_thread(self.inject, *choice)
                # The fleet recovers before the next fault: every replica up, and every stream the
                # last fault broke delivering again (a cut leaves no replica down, and cuts 3-6 s
                # apart hit streams still waiting for their resumed first token: their gap was
                # the time to the next cut, not to a token).
                while self.ns.spaced and not (self.redis_up and all(r.up and not r.busy for r in self.replicas)
                                              and not any(recovering(st) for st in streams)):
                    await asyncio.sleep(0.5)
                await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.ns.interval_s)
            faults_done.set()

        sched = asyncio.create_task(schedule())
        while not faults_done.is_set() or n < self.ns.min_streams:
            while len(active) < self.ns.concurrency:
                st = Stream(n, n % len(self.prompts), n % len(self.replicas))
                n += 1
                streams.append(st)
                task = asyncio.create_task(self.one(st))
                active.add(task)
                task.add_done_callback(active.discard)
            await asyncio.sleep(0.05)
        await sched
        if active:
            await asyncio.gather(*active)
        # The fleet recovers: wait for restarts in flight (the health timeline ends healthy).
        deadline = time.monotonic() + 600
        while any(r.busy for r in self.replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.5)  # one more health poll
        self.stop_polling.set()
        return self.report(streams, ref, unstable)

    # -- the figures -------------------------------------------------------------
    def report(self, streams: list[Stream], ref: dict, unstable: list[int]) -> dict:
        def diff(got, want):
            lost = dup = changed = 0
            for op, a1, a2, b1, b2 in difflib.SequenceMatcher(None, want, got, autojunk=False).get_opcodes():
                if op == "delete":
                    lost += a2 - a1
                elif op == "insert":
                    dup += b2 - b1
                elif op == "replace":
                    changed += max(a2 - a1, b2 - b1)
            return lost, dup, changed

        by_url = {r.url: r.i for r in self.replicas}

        def attribute(st: Stream):
            """The faults a stream met: each of its failures goes to the latest
            fault on the replica it failed on (within 60 s), else to the latest
            Redis fault (which breaks no stream itself but may make a resume
            regenerate), else to the latest fault."""
            out = []
            for t, endpoint, _ in st.failures:
                replica = by_url.get(str(endpoint or "").rstrip("/").removesuffix("/v1"))
                recent = [f for f in self.faults if f["at"] <= t and t - f["at"] < 60]
                cands = ([f for f in recent if f["replica"] == replica]
                         or [f for f in recent if f["replica"] is None] or recent)
                if cands:
                    out.append((cands[-1], t))
            return out

        per: dict[str, dict] = {k: {"faults": 0, "streams_hit": 0, "completed": 0, "identical": 0, "errors": 0,
                                    "resumes_by_mode": {}, "gaps_s": [], "gaps_others_serving_s": [], "parts": []}
                                for k in FAULTS}
        gap_rows: list[dict] = []   # each gap measured: its fault, stream, client steps (s after the fault)
        for f in self.faults:
            per[f["kind"]]["faults"] += 1
        total = {"streams_started": len(streams), "completed": 0, "identical": 0, "lost_streams": 0,
                 "lost_tokens": 0, "duplicated_tokens": 0, "changed_tokens": 0, "errors_surfaced": 0,
                 "streams_with_a_failure": 0, "resumes_by_mode": {}, "waits_for_the_fleet": 0,
                 "streams_that_waited": 0, "resumed_on": {"same_replica": 0, "another_replica": 0}}
        examples = []
        for st in streams:
            want_ids, want_text = ref[st.prompt]
            ok = st.error is None
            same = ok and st.ids == want_ids and st.text == want_text
            lost, dup, changed = diff(st.ids, want_ids)
            total["completed"] += ok
            total["identical"] += same
            total["lost_streams"] += not ok
            total["errors_surfaced"] += not ok
            total["lost_tokens"] += lost if ok else 0
            total["duplicated_tokens"] += dup
            total["changed_tokens"] += changed
            total["streams_with_a_failure"] += bool(st.failures)
            total["waits_for_the_fleet"] += st.waits
            total["streams_that_waited"] += bool(st.waits)
            for a, b in zip(st.endpoints, st.endpoints[1:]):
                total["resumed_on"]["same_replica" if a == b else "another_replica"] += 1
            for _, m in st.resumes:
                total["resumes_by_mode"][m] = total["resumes_by_mode"].get(m, 0) + 1
            if (not same) and len(examples) < 10:
                at = next((i for i, (a, b) in enumerate(zip(st.text, want_text)) if a != b),
                          min(len(st.text), len(want_text)))
                examples.append({"stream": st.n, "prompt": st.prompt, "error": st.error, "lost": lost, "dup": dup,
                                 "changed": changed, "unstable_reference": st.prompt in unstable,
                                 "text_differs_at": at, "text_got": st.text[max(0, at - 30):at + 30],
                                 "text_want": want_text[max(0, at - 30):at + 30],
                                 "resumes": [m for _, m in st.resumes]})
            seen = set()
            hits = attribute(st)
            for rt, mode in st.resumes:   # a resume goes to the fault of the failure before it
                before = [f for f, t in hits if t <= rt]
                if before:
                    row = per[before[-1]["kind"]]["resumes_by_mode"]
                    row[mode] = row.get(mode, 0) + 1
            for f, t in hits:
                row = per[f["kind"]]
                if id(f) in seen:
                    continue   # a second failure put down to the same fault: one stream, one gap
                seen.add(id(f))
                row["streams_hit"] += 1
                row["completed"] += ok
                row["identical"] += same
                row["errors"] += not ok
                after = [x for x in st.times if x > f["at"]]
                # the gap is a stream's in flight at the fault: it had delivered and was still going
                in_flight = st.started < f["at"] and any(x <= f["at"] for x in st.times)
                if after and in_flight:
                    row["gaps_s"].append(after[0] - f["at"])
                    gap_rows.append({"fault": self.faults.index(f) + 1, "stream": st.n,
                                     "gap_s": round(after[0] - f["at"], 3),
                                     "failed_after_s": round(t - f["at"], 3),
                                     "steps": [[round(x - f["at"], 3), kind] for x, kind in st.steps
                                               if f["at"] - 1 <= x <= after[0]],
                                     "endpoints": st.endpoints,
                                     # what the client saw fail: the failures after the fault, up to the gap's end
                                     "failures": [[round(x - f["at"], 3), str(ep or ""), why]
                                                  for x, ep, why in st.failures if f["at"] <= x <= after[0]]})
                    # the gap's parts: the fault until the client saw the failure, until the attempt
                    # that delivered next began, until its first token, until the first token delivered
                    attempts = [x for x, kind in st.steps if kind == "attempt_start" and t <= x <= after[0]]
                    firsts = [x for x, kind in st.steps if kind == "first_token" and t <= x <= after[0]]
                    routed = [x for x, kind in st.steps if kind in ("fallback", "retry_scheduled", "wait",
                                                                      "attempt_start") and x >= t]
                    if attempts and firsts:
                        row["parts"].append((t - f["at"], routed[0] - t, attempts[-1] - routed[0],
                                             max(0.0, firsts[-1] - attempts[-1]), after[0] - firsts[-1]))
                    if f["fleet_otherwise_healthy"]:
                        row["gaps_others_serving_s"].append(after[0] - f["at"])
        # the floor a gap is measured against: a new request's first token, and the gap between tokens,
        # of the streams no fault touched, under the same load
        calm = [st for st in streams if not st.failures and st.error is None and st.times]
        firsts = sorted(st.times[0] - st.started for st in calm)
        steps = sorted(b - a for st in calm for a, b in zip(st.times, st.times[1:]))
        total["undisturbed"] = {"streams": len(calm),
                                "first_token_p50_s": round(statistics.median(firsts), 2) if firsts else None,
                                "inter_token_p50_s": round(statistics.median(steps), 3) if steps else None,
                                "inter_token_p99_s": round(steps[int(0.99 * (len(steps) - 1))], 3) if steps else None}
        for row in per.values():
            gaps = sorted(row.pop("gaps_s"))
            row["gap_p50_s"] = round(statistics.median(gaps), 2) if gaps else None
            row["gap_p99_s"] = round(gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))], 2) if gaps else None
            row["gaps_measured"] = len(gaps)
            parts = row.pop("parts")
            row["gap_parts_p50_s"] = ({name: round(statistics.median(p[k] for p in parts), 2) for k, name in
                                       enumerate(("fault_to_failure", "failure_to_route", "route_to_attempt",
                                                  "attempt_to_first_token", "first_token_to_delivered"))}
                                      if parts else None)
            gaps = sorted(row.pop("gaps_others_serving_s"))
            row["gap_p50_fleet_otherwise_healthy_s"] = round(statistics.median(gaps), 2) if gaps else None
            row["gaps_fleet_otherwise_healthy"] = len(gaps)
        return {"meta": {"host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": self.ns.seed,
                         "replicas": self.ns.replicas, "concurrency": self.ns.concurrency,
                         "max_tokens": self.ns.max_tokens, "prompts": len(self.prompts), "faults": len(self.faults),
                         "duration_s": self.now(), "model": "SmolLM2-135M-Instruct (float32, vLLM CPU build)",
                         "max_num_batched_tokens": self.ns.step_tokens or "vLLM's default (2048 on the CPU build)",
                         "stall_timeout_s": self.ns.stall_s,
                         "redis_persistence": None if self.ns.no_persist else "appendonly yes, appendfsync everysec",
                         "client": {"max_retries": 3, "attempts": 3, "wait": "fixed-jitter 0.5-1.0 s",
                                    "deadline_s": self.ns.deadline_s if self.ns.deadline_s is not None
                                    else "default (300 s on L0 servers)", "fleet": "one l0.Fleet shared"},
                         "reference_unstable_prompts": unstable},
                "total": total, "per_fault": per, "faults": [{k: v for k, v in f.items() if k != "at"}
                                                            for f in self.faults],
                "health_timeline": {str(k): v for k, v in self.health.items()}, "not_identical": examples,
                "gaps": gap_rows,
                # every failure a stream met (s since the run began, endpoint, what the client saw)
                "failures": [{"stream": st.n, "primary": st.primary, "endpoints": st.endpoints,
                              "failures": [[round(x - self.t0, 3), str(ep or ""), why] for x, ep, why in st.failures]}
                             for st in streams if st.failures]}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--faults", type=int, default=100)
    ap.add_argument("--kinds", default=",".join(FAULTS), help="fault types to draw from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--prompts", type=int, default=48, help="distinct prompts (tests/data/prompts.json)")
    ap.add_argument("--interval-s", type=float, default=4.0, help="mean time between faults")
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--freeze-s", type=float, default=15.0)
    ap.add_argument("--step-tokens", type=int, default=0,
                    help="the replicas' --max-num-batched-tokens (default: vLLM's, 2048 on the CPU build)")
    ap.add_argument("--keep-logs", metavar="DIR", help="copy the replicas' logs here at the end")
    ap.add_argument("--stall-s", type=float, default=10.0, help="the replicas' watchdog stall timeout")
    ap.add_argument("--outage-s", type=float, default=10.0)
    ap.add_argument("--xid-hold-s", type=float, default=3.0, help="a FAILED replica's time before its restart")
    ap.add_argument("--inter-token-s", type=float, default=20.0, help="the client's inter-token timeout")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="the client's time budget after a failure (default: l0.Retry's, 300 s on L0 servers)")
    ap.add_argument("--no-persist", action="store_true", help="Redis without its append-only file")
    ap.add_argument("--cycle", action="store_true", help="take the fault kinds in turn, not at random")
    ap.add_argument("--min-streams", type=int, default=0)
    ap.add_argument("--spaced", action="store_true",
                    help="each fault waits for the fleet to recover from the last: every replica up, every "
                         "stream it broke delivering again (gaps with the rest healthy)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "chaos.json"))
    ns = ap.parse_args(argv)
    ns.kinds = [k for k in ns.kinds.split(",") if k]
    unknown = set(ns.kinds) - set(FAULTS)
    if unknown:
        ap.error(f"unknown fault kinds: {sorted(unknown)}")
    return ns


def main(argv=None) -> dict:
    import tempfile

    ns = parse(argv)
    chaos = Chaos(ns)
    with tempfile.TemporaryDirectory(prefix="l0-chaos-") as tmp:
        chaos.setup(Path(tmp))
        try:
            doc = asyncio.run(chaos.run())
        finally:
            chaos.teardown()
            if ns.keep_logs:  # the replicas' logs (a stall's report has every thread's stack)
                Path(ns.keep_logs).mkdir(parents=True, exist_ok=True)
                for log in Path(tmp).glob("replica-*.log"):
                    shutil.copy(log, Path(ns.keep_logs) / log.name)
    t = doc["total"]
    print(f"\nstreams {t['streams_started']}: completed {t['completed']}, identical {t['identical']}, "
          f"lost {t['lost_streams']}, duplicated tokens {t['duplicated_tokens']}, errors surfaced "
          f"{t['errors_surfaced']}; {doc['meta']['faults']} faults in {doc['meta']['duration_s']:.0f} s; "
          f"resumed on {t['resumed_on']}; undisturbed streams {t['undisturbed']}")
    for kind, row in doc["per_fault"].items():
        print(f"  {kind:>14}: {row['faults']:3d} faults, {row['streams_hit']:4d} streams hit, "
              f"{row['identical']:4d} identical, {row['errors']:3d} errors, gap p50 {row['gap_p50_s']} s "
              f"p99 {row['gap_p99_s']} s (p50 {row['gap_p50_fleet_otherwise_healthy_s']} s with the rest of the "
              f"fleet healthy), resumes {row['resumes_by_mode']}\n{'':>18}gap parts p50: {row['gap_parts_p50_s']}")
    write_result(doc, ns.out)
    return doc


if __name__ == "__main__":
    main()
