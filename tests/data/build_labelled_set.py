"""Regenerate ``smollm2_labelled.jsonl``: real greedy outputs of SmolLM2-135M-Instruct
(vLLM CPU build, L0 off) for ``prompts.json``.

Label: ``runaway`` when the output ran to max_tokens, ``finished`` when the model
stopped by itself. Run: ``.venv/bin/python tests/data/build_labelled_set.py``.

``--holdout`` builds ``smollm2_holdout.jsonl`` from ``prompts_holdout.json``
instead: outputs never used to choose the detector's defaults, only to check
them (ids ``h00``...).
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
MAX_TOKENS = 1024


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1] / "plugin"))
    from l0.engine.models import prepare_smollm2
    from vllm import LLM, SamplingParams

    holdout = "--holdout" in sys.argv[1:]
    prompts_file, out_file, prefix = (("prompts_holdout.json", "smollm2_holdout.jsonl", "h") if holdout
                                      else ("prompts.json", "smollm2_labelled.jsonl", "p"))
    model = prepare_smollm2()
    prompts = json.loads((HERE / prompts_file).read_text())
    llm = LLM(model=str(model), dtype="float32", gpu_memory_utilization=0.25,
              max_model_len=2048, seed=0, enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    with open(HERE / out_file, "w") as f:
        for i, (p, o) in enumerate(zip(prompts, outs)):
            c = o.outputs[0]
            label = "runaway" if c.finish_reason == "length" else "finished"
            f.write(json.dumps({"id": f"{prefix}{i:02d}", "prompt": p, "label": label,
                                "finish_reason": c.finish_reason,
                                "token_ids": list(c.token_ids), "text": c.text}) + "\n")
            print(f"{i:02d} {label:8s} {len(c.token_ids):4d} {p[:50]}")


if __name__ == "__main__":
    main()
