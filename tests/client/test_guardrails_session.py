"""Guardrails and drift monitors inside the session loop (``l0.run`` over
in-process streams): severities (warning: event; error: retried while the
caller has seen nothing; fatal: raised), ``hold``, ``{}`` as real output,
non-streaming answers, and the server's verdict as drift."""
from __future__ import annotations

import asyncio

import pytest

import l0
from l0 import guardrails as g
from l0.client.retry import GuardrailFailed, GuardrailFatal, Retry


def collect(stream, limit: float = 30.0):
    async def go():
        return [chunk async for chunk in stream]
    return asyncio.run(asyncio.wait_for(go(), limit))


async def _nosleep(s):
    pass


def pieces(*answers):
    """A factory giving answers[i] on call i (the last one after that), in
    4-character pieces."""
    calls = []

    def factory():
        text = answers[min(len(calls), len(answers) - 1)]
        calls.append(text)

        async def gen():
            for i in range(0, len(text), 4):
                yield text[i:i + 4]
        return gen()
    return factory, calls


def opts(events, **kw):
    kw.setdefault("retry", Retry(attempts=3, wait=lambda rs: 0.0))
    return dict(sleep=_nosleep, on_event=events.append, **kw)


SECRET = g.custom(r"\bsecret-\d+\b", name="secret", severity="error")


def test_a_warning_is_an_event_and_the_answer_passes():
    events = []
    factory, calls = pieces("The code is secret-42, keep it.")
    rule = g.custom(r"\bsecret-\d+\b", name="secret", severity="warning")
    out = collect(l0.run(factory, guardrails=[rule], **opts(events)))
    assert "".join(out) == "The code is secret-42, keep it." and len(calls) == 1
    v = [e for e in events if e.type == "guardrail"]
    assert [(e.rule, e.severity, e.start, e.end, e.excerpt) for e in v] == [
        ("custom:secret", "warning", 12, 21, "secret-42")]
    assert [e.type for e in events][-1] == "complete"


def test_an_error_is_retried_unseen_with_hold_and_the_clean_answer_delivered():
    events = []
    factory, calls = pieces("The code is secret-42.", "I can't share that.")
    out = collect(l0.run(factory, guardrails=[SECRET], hold=True, **opts(events)))
    assert "".join(out) == "I can't share that." and len(calls) == 2
    assert [e.type for e in events] == ["session_start", "attempt_start", "first_token", "guardrail", "failure",
                                        "retry_scheduled", "attempt_start", "first_token", "complete"]
    failure = next(e for e in events if e.type == "failure")
    assert failure.category == "model" and "custom:secret" in failure.error


def test_without_hold_an_error_before_any_real_content_is_still_retried():
    """The violation ends in the first piece with real content ("... " is
    held back, "secr" never delivered): the caller has seen nothing."""
    events = []
    factory, calls = pieces("... secret-7 and more", "fine answer")
    out = collect(l0.run(factory, guardrails=[g.custom(r"sec", name="secret", severity="error")],
                         **opts(events)))
    assert "".join(out) == "fine answer" and len(calls) == 2


def test_without_hold_an_error_after_delivery_is_raised_not_repeated():
    """A regex of unbounded length (``\\d+``) is decided once ``max_len`` + 1
    characters from the match's start have arrived (what makes the result
    independent of chunking): here once the text reaches offset 40 (23 + 16
    + 1); the piece that brought it (36..40) is never delivered."""
    events = []
    text = "Some words first, then secret-42 appears, and the answer goes on for a while."
    factory, calls = pieces(text)
    got = []
    rule = g.custom(r"\bsecret-\d+\b", name="secret", severity="error", max_len=16)

    async def go():
        async for c in l0.run(factory, guardrails=[rule], **opts(events)):
            got.append(c)
    with pytest.raises(GuardrailFatal) as info:
        asyncio.run(go())
    assert len(calls) == 1 and "after" in str(info.value) and "hold=True" in str(info.value)
    assert "".join(got) == text[:36]
    v = next(e for e in events if e.type == "guardrail")
    assert (v.start, v.end, v.excerpt, v.final) == (23, 32, "secret-42", False)
    assert [e.type for e in events][-3:] == ["failure", "retry_given_up", "error"]


def test_fatal_is_never_retried():
    events = []
    factory, calls = pieces("The code is secret-42.", "clean")
    rule = g.custom(r"\bsecret-\d+\b", name="secret", severity="fatal")
    with pytest.raises(GuardrailFatal):
        collect(l0.run(factory, guardrails=[rule], hold=True, **opts(events)))
    assert len(calls) == 1
    assert next(e for e in events if e.type == "retry_given_up").why == "fatal"


def test_errors_use_up_attempts_then_raise():
    events = []
    factory, calls = pieces("secret-1 again")
    with pytest.raises(GuardrailFailed):
        collect(l0.run(factory, guardrails=[SECRET], hold=True, **opts(events, retry=Retry(attempts=2))))
    assert len(calls) == 2
    assert next(e for e in events if e.type == "retry_given_up").why == "attempts"


def test_end_of_stream_checks_run_before_delivery_with_hold():
    """An unclosed JSON answer (json_structure, error at the end): retried,
    the caller only sees the closed one."""
    events = []
    factory, calls = pieces('{"a": [1, 2', '{"a": [1, 2]}')
    out = collect(l0.run(factory, guardrails=[g.json_structure(severity="error")], hold=True, **opts(events)))
    assert "".join(out) == '{"a": [1, 2]}' and len(calls) == 2
    v = next(e for e in events if e.type == "guardrail")
    assert v.rule == "json" and v.final


@pytest.mark.parametrize("answer", ["{}", "[]", " [ ] ", '""', "[{}]"])
def test_an_empty_json_value_is_output_not_zero_output(answer):
    events = []
    factory, calls = pieces(answer)
    out = collect(l0.run(factory, guardrails="recommended", **opts(events)))
    assert "".join(out) == answer and len(calls) == 1
    assert not [e for e in events if e.type in ("guardrail", "failure")]


def test_punctuation_only_is_still_zero_output():
    events = []
    factory, calls = pieces("...", "real")
    assert "".join(collect(l0.run(factory, **opts(events)))) == "real" and len(calls) == 2


def test_drift_monitors_report_as_drift_events():
    events = []
    line = "The cat sat on the mat and looked at the door again.\n"
    factory, _ = pieces("Here is a story.\n" + line * 6)
    collect(l0.run(factory, drift=True, **opts(events)))
    d = [e for e in events if e.type == "drift"]
    assert d and d[0].rule == "drift:repetition" and d[0].source == "text" and d[0].severity == "warning"
    assert not [e for e in events if e.type == "guardrail"]


def test_the_servers_loop_verdict_becomes_a_drift_event():
    from l0.client.session import Session

    s = Session([object.__new__(l0.client.wrap.FactoryEndpoint)], drift=l0.client.drift.monitors())
    s.verdict = {"action": "stop", "interventions": [   # the shapes l0.engine.step writes
        {"event": "l0.intervention", "kind": "near_loop", "period": 4, "token_index": 40, "action": "penalize"},
        {"event": "l0.intervention", "kind": "budget", "period": 0, "token_index": 90, "action": "close",
         "reason": "budget", "depth": 2},
        {"event": "l0.intervention", "kind": "budget", "period": 0, "token_index": 93, "action": "stop",
         "closed": "budget"}]}
    s._server_drift()
    assert [(e.rule, e.source, e.detail["period"]) for e in s.events] == [("drift:server_near_loop", "server", 4)]


def test_presets_and_specs_are_accepted_and_bad_ones_refused():
    for spec in ("minimal", "recommended", "strict", [g.markdown()], g.preset("strict")):
        collect(l0.run(pieces("fine")[0], guardrails=spec, sleep=_nosleep))
    with pytest.raises(ValueError):
        l0.run(pieces("x")[0], guardrails="lenient")
    with pytest.raises(ValueError):
        l0.run(pieces("x")[0], drift=["nonsense"])


def test_a_tool_call_answer_is_not_zero_output_for_the_guardrails():
    """Found trying guardrails with tool calls: the answer has no text by
    design, and zero_output (error in every preset) made it a retry."""
    events, calls = [], []
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

    def factory():
        calls.append(1)

        async def gen():
            yield {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
            yield {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {},
                                                                   "finish_reason": "tool_calls"}]}
        return gen()
    out = collect(l0.run(factory, guardrails="strict", **opts(events)))
    assert len(out) == 2 and len(calls) == 1
    assert not [e for e in events if e.type in ("guardrail", "failure")]
    # a text answer with nothing in it still fails the rule
    factory2, calls2 = pieces("...")
    with pytest.raises(GuardrailFailed):
        collect(l0.run(factory2, guardrails="strict", check_zero_output=False,
                       **opts([], retry=Retry(attempts=1))))
