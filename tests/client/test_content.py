"""l0.client.content: one definition of "real content" for the session's zero-output
guard, its hold, the non-streaming path and the zero_output guardrail."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l0.client import chunks as ck
from l0 import guardrails as g
from l0.client.content import ContentScan, has_content
from l0.client.session import Received


@pytest.mark.parametrize("text", ["", "  \n\t ... !?", "$", "+", "`", "^|~", "{", "[}", '"', "«»", "—", "“”"])
def test_not_content(text):
    assert not has_content(text)


@pytest.mark.parametrize("text", [" a", "42", "日本", "0", "null", "{}", "[ ]", '""', "[{}]", '{"": ""}', "👍", "$5"])
def test_content(text):
    assert has_content(text)


def test_a_split_empty_object_is_content_across_chunks():
    scan = ContentScan()
    assert not scan.feed("{ ")
    assert not scan.feed("\n")
    assert scan.feed(" }") and scan.found


_ALPHABET = st.sampled_from(list(" \n{}[]\"$+`.,!?-a7😀"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(_ALPHABET, max_size=6), max_size=8))
def test_every_user_of_the_definition_agrees_however_the_text_is_chunked(parts):
    text = "".join(parts)
    want = has_content(text)
    scan = ContentScan()
    for p in parts:
        scan.feed(p)
    assert scan.found == want
    received = Received()
    for p in parts:
        received.add(ck.Parts(text=p))
    assert received.meaningful == want
    rule = g.zero_output().fresh()
    at = 0
    for p in parts:
        rule.feed(p, at)
        at += len(p)
    assert (rule.finish(text) == []) == want


def test_a_tool_call_is_content_for_the_session():
    received = Received()
    received.add(ck.Parts(text="", token_ids=(), tool_calls=True))
    assert received.meaningful
