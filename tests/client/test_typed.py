"""The pure parts of ``l0.structured`` (``l0.client.structured``): parsing, validation
against a Pydantic model or a JSON schema, json_repair in schema mode, the
re-ask message. The whole call runs on a real server in
tests/engine/vllm/test_content_e2e.py."""
from __future__ import annotations

import pytest
from pydantic import BaseModel

from l0.client.structured import _Schema, parse, reask_messages, repair


class Person(BaseModel):
    name: str
    age: int


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array",
          "items": {"type": "string"}}}, "required": ["name", "tags"], "title": "tagged thing"}


def test_parse_takes_plain_and_fenced_json_and_says_where_it_breaks():
    assert parse(' {"a": 1} ') == {"a": 1}
    assert parse('```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    with pytest.raises(ValueError, match=r"not valid JSON: Expecting ',' delimiter at line 1 column 10 \(char 9 of 10\)"):
        parse('{"a": [1 2')


def test_validation_by_model_and_by_json_schema():
    model = _Schema(Person, None)
    assert model.name == "Person" and model.json_schema["required"] == ["name", "age"]
    assert model.validate({"name": "Ava", "age": 20}) == Person(name="Ava", age=20)
    with pytest.raises(ValueError, match="age: Input should be a valid integer"):
        model.validate({"name": "Ava", "age": "old"})
    plain = _Schema(SCHEMA, None)
    assert plain.name == "tagged_thing"
    assert plain.validate({"name": "x", "tags": []}) == {"name": "x", "tags": []}
    with pytest.raises(ValueError, match=r"at tags/0: 3 is not of type 'string'"):
        plain.validate({"name": "x", "tags": [3]})
    with pytest.raises(TypeError):
        _Schema("Person", None)
    with pytest.raises(Exception):  # jsonschema's SchemaError: not a schema
        _Schema({"type": 12}, None)


def test_repair_closes_a_cut_answer_in_schema_mode():
    spec = _Schema(Person, None)
    assert spec.validate(repair('{"name": "Ava", "age": 20', spec)) == Person(name="Ava", age=20)
    with pytest.raises(ValueError, match="json_repair"):
        repair('{"name": "Ava"', spec)  # a required field can't be invented


def test_the_reask_goes_into_the_last_user_message():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "Q?"}]
    out = reask_messages(msgs, "age: too young")
    assert out[-1] == {"role": "user", "content": "Q?\n\nA previous answer was rejected: age: too young. "
                                                  "Make sure the answer meets this."}
    assert msgs[-1]["content"] == "Q?"  # the caller's messages are not changed
    parts = [{"role": "user", "content": [{"type": "text", "text": "Q?"}]}]
    assert reask_messages(parts, "e")[-1] == {"role": "user", "content": "A previous answer was rejected: e. "
                                                                        "Make sure the answer meets this."}
