"""Runs requests through a real offline vLLM engine and prints the results as
one JSON line (``RESULT {...}``): the engine process for
``test_v2_engine_e2e.py``, which sets the runner through the environment.

    python v2_engine_run.py SPEC.json
"""
from __future__ import annotations

import json
import sys
import time

if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model"], dtype="float32", gpu_memory_utilization=0.2, max_model_len=2048,
              max_num_seqs=8, enforce_eager=True, seed=0, logits_processors=spec["logits_processors"])
    errors = {}
    for name, xargs in spec.get("bad", {}).items():
        try:
            llm.generate(["hi"], SamplingParams(max_tokens=2, extra_args=xargs))
            errors[name] = None
        except Exception as exc:  # the frontend's validator: a clear error, the engine serves on
            errors[name] = f"{type(exc).__name__}: {exc}"
    reqs = spec["requests"]
    msgs = [[{"role": "user", "content": r["prompt"]}] for r in reqs]
    sps = [SamplingParams(max_tokens=r["max_tokens"], temperature=0, extra_args=r["xargs"]) for r in reqs]
    t0 = time.time()
    outs = llm.chat(msgs, sps)
    took = time.time() - t0
    res = [{"id": r["id"], "token_ids": list(o.outputs[0].token_ids), "finish_reason": o.outputs[0].finish_reason,
            "text": o.outputs[0].text} for r, o in zip(reqs, outs)]
    # Records are written off the decode path, the last ones by the engine's
    # finisher thread (V2 has no removal hook): polled while the engine lives.
    records = {}
    if spec.get("records"):
        from l0.engine.checkpoint import open_store
        store = open_store(spec["store"])
        t1 = time.time()
        for key in spec["records"]:
            rec = None
            while time.time() - t1 < 30:
                rec = store.get(key)
                if rec is not None and rec.finished:
                    break
                time.sleep(0.05)
            records[key] = None if rec is None else {
                "output_ids": list(rec.output_ids), "finished": rec.finished, "finish_reason": rec.finish_reason,
                "interventions": rec.interventions, "after_s": round(time.time() - t1, 2)}
    print("RESULT " + json.dumps({"results": res, "errors": errors, "seconds": took, "records": records}),
          flush=True)
