"""Regenerate ``smollm2_json.jsonl``: real greedy answers of SmolLM2-135M-Instruct
to the JSON-schema prompts in ``json_prompts.json``, through ``l0 serve`` with
L0 off (vLLM CPU build, ``response_format: json_schema``, 1024 max tokens).

Label: ``clean`` when the answer finished by itself and validates against its
schema, ``runaway`` when it ran to max_tokens. Run:
``.venv/bin/python tests/data/build_json_set.py``.
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent
MAX_TOKENS = 1024
SERVER_ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.25", "--max-model-len", "2048",
               "--enforce-eager", "--max-num-seqs", "32", "--seed", "0"]


def label(row: dict, finish_reason: str, text: str) -> str:
    import jsonschema
    if finish_reason == "length":
        return "runaway"
    try:
        jsonschema.validate(json.loads(text), row["schema"])
    except (ValueError, jsonschema.ValidationError):
        return "invalid"
    return "clean"


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1] / "plugin"))
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server
    from l0.client.stream import stream_chat

    rows = json.loads((HERE / "json_prompts.json").read_text())
    model = str(prepare_smollm2())
    with Server(model, SERVER_ARGS, env={"L0_ACTION": "off", "L0_CHECKPOINT_STORE": "off"}) as srv:
        def one(row):
            return stream_chat(srv.url, model, row["prompt"], MAX_TOKENS, {"l0_action": "off"},
                               response_format={"type": "json_schema",
                                                "json_schema": {"name": row["id"], "schema": row["schema"]}})
        with ThreadPoolExecutor(len(rows)) as pool:
            outs = list(pool.map(one, rows))
    with open(HERE / "smollm2_json.jsonl", "w") as f:
        for row, got in zip(rows, outs):
            lab = label(row, got.finish_reason, got.text)
            f.write(json.dumps({"id": row["id"], "label": lab, "finish_reason": got.finish_reason,
                                "token_ids": got.token_ids, "text": got.text}) + "\n")
            print(f"{row['id']} {lab:8s} {len(got.token_ids):4d} {row['prompt'][:50]}")


if __name__ == "__main__":
    main()
