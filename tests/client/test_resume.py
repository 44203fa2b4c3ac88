"""The pure part of exact resume: merging and the continuation request."""
import pytest

from l0.contract import ModelIdentity, Record
from l0.client.resume import ResumeError, check_model, continuation_body, merge, needs_regeneration, remaining


def rec(**kw):
    base = dict(key="k-1", model=ModelIdentity("smollm2", "sha256:t"), prompt_ids=(1, 2, 3), output_ids=(7, 8),
                sampling={"temperature": 0.0, "max_tokens": 10, "min_tokens": 4, "seed": 5, "stop": ["END"],
                          "vllm_xargs": {"l0_key": "k-1", "l0_action": "stop"}})
    base.update(kw)
    return Record(**base)


def test_merge_takes_the_longer_consistent_prefix():
    assert merge([7, 8, 9], [7, 8]) == [7, 8, 9]      # client ahead of the last checkpoint
    assert merge([7], [7, 8, 9]) == [7, 8, 9]         # checkpoint ahead of what was delivered
    assert merge([], [7]) == [7] and merge([7], []) == [7]
    with pytest.raises(ResumeError, match="disagrees .* at index 1") as err:
        merge([7, 9, 9], [7, 8], key="k")
    assert err.value.token_ids == [7, 9, 9]           # nothing lost


def test_continuation_body():
    body = continuation_body(rec(), [7, 8, 9], "smollm2")
    assert body["prompt"] == [1, 2, 3, 7, 8, 9]
    assert body["max_tokens"] == 7 and body["min_tokens"] == 1
    assert body["seed"] == 5 and body["stop"] == ["END"] and body["temperature"] == 0.0
    assert body["vllm_xargs"] == {"l0_key": "k-1", "l0_action": "stop", "l0_resume_from": 3}
    assert body["stream"] and body["return_token_ids"] and body["model"] == "smollm2"
    assert remaining(rec(), [7, 8, 9]) == 7


def test_model_check_and_guided():
    check_model(rec(), "smollm2")
    with pytest.raises(ResumeError, match="written by model 'smollm2', not 'llama'"):
        check_model(rec(), "llama", [1])
    assert not needs_regeneration(rec(sampling={"temperature": 0.0, "stop_token_ids": [2]}))
    assert needs_regeneration(rec(sampling={"structured_outputs": {"json": {}}}))
    assert needs_regeneration(rec(sampling={"stop": ["\n\n"]}))    # straddles a cut: see the e2e test
    assert not needs_regeneration(rec(sampling={"stop": []})) and not needs_regeneration(rec(sampling={"stop": None}))
