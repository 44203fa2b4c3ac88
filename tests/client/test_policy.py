"""The retry policy: categories, server-asked waits, counts, waits."""
from __future__ import annotations

import email.utils

import httpx
import openai
import pytest
import tenacity

from l0.client.retry import (Category, FirstTokenTimeout, Retry, RetryState, Stalled, StreamEnded, Timeouts, ZeroOutput,
                       backoff, classify, decide, retry_after_s, wait_openai)

REQ = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")


def status_error(code: int, headers: dict | None = None) -> openai.APIStatusError:
    resp = httpx.Response(code, headers=headers or {}, request=REQ, json={"error": {"message": "x"}})
    cls = {400: openai.BadRequestError, 401: openai.AuthenticationError, 429: openai.RateLimitError}.get(
        code, openai.APIStatusError)
    return cls("x", response=resp, body=None)


@pytest.mark.parametrize("code,category", [
    (400, "fatal"), (401, "fatal"), (403, "fatal"), (404, "fatal"), (422, "fatal"), (418, "fatal"),
    (408, "transient"), (409, "transient"), (429, "transient"), (500, "transient"), (502, "transient"),
    (503, "transient"), (504, "transient")])
def test_status_codes(code, category):
    assert classify(status_error(code)).value == category


def test_an_error_event_inside_a_stream_is_the_status_it_says():
    """The SDKs raise a stream's error event with the stream's 200 (anthropic)
    or no status (openai's APIError): its own code or type decides."""
    from anthropic._error_classes import make_status_error   # what the SDK's stream raises for the event

    # vLLM's event for a generation that failed mid-stream, as openai raises it
    assert classify(openai.APIError("engine died", REQ, body={"message": "engine died", "type":
                                    "InternalServerError", "code": 500})) is Category.TRANSIENT
    assert classify(openai.APIError("bad", REQ, body={"message": "bad", "code": 400})) is Category.FATAL
    assert classify(openai.APIError("?", REQ, body=None)) is Category.FATAL
    ok = httpx.Response(200, request=httpx.Request("POST", "http://127.0.0.1:1/v1/messages"))

    def event(kind):
        return make_status_error("x", body={"type": "error", "error": {"type": kind, "message": "x"}}, response=ok)
    assert classify(event("overloaded_error")) is Category.TRANSIENT
    assert classify(event("api_error")) is Category.TRANSIENT
    assert classify(event("rate_limit_error")) is Category.TRANSIENT
    assert classify(event("invalid_request_error")) is Category.FATAL
    assert classify(event("something_new")) is Category.FATAL   # unknown: as before


def test_transport_and_model_failures():
    assert classify(openai.APIConnectionError(request=REQ)) is Category.NETWORK
    assert classify(openai.APITimeoutError(request=REQ)) is Category.TRANSIENT
    assert classify(httpx.RemoteProtocolError("incomplete chunked read")) is Category.NETWORK
    assert classify(httpx.ConnectError("refused")) is Category.NETWORK
    assert classify(ConnectionResetError()) is Category.NETWORK
    assert classify(StreamEnded()) is Category.NETWORK
    assert classify(FirstTokenTimeout()) is Category.TRANSIENT
    assert classify(Stalled()) is Category.MODEL
    assert classify(ZeroOutput()) is Category.MODEL
    assert classify(KeyError("a bug in the caller's code")) is Category.FATAL


def test_retry_after_forms():
    now = 1_700_000_000.0
    assert retry_after_s({"retry-after": "7"}) == 7.0
    assert retry_after_s({"retry-after": "1.5"}) == 1.5
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_s({"retry-after": date}, now=now) == 30.0
    assert retry_after_s({"retry-after": email.utils.formatdate(now - 5, usegmt=True)}, now=now) == 0.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({"retry-after": "-3"}) is None
    assert retry_after_s({}) is None


def test_retry_after_is_honoured_and_capped():
    policy = Retry(wait=tenacity.wait_fixed(0.5))
    state = RetryState()
    assert decide(policy, state, status_error(429, {"retry-after": "7"}), Category.TRANSIENT).delay_s == 7.0
    assert decide(policy, state, status_error(503, {"retry-after": "500"}), Category.TRANSIENT).delay_s == 120.0
    assert decide(policy, state, status_error(503), Category.TRANSIENT).delay_s == 0.5
    off = Retry(wait=tenacity.wait_fixed(0.5), respect_retry_after=False)
    assert decide(off, RetryState(), status_error(429, {"retry-after": "7"}), Category.TRANSIENT).delay_s == 0.5
    assert state.by_category == {"transient": 3} and state.retries == 3


def test_counts_by_category():
    policy = Retry(attempts=2, max_retries=3, wait=tenacity.wait_none())
    state = RetryState()
    net = openai.APIConnectionError(request=REQ)
    assert decide(policy, state, net, Category.NETWORK).retry
    assert decide(policy, state, ZeroOutput(), Category.MODEL).retry     # the second try of the model
    d = decide(policy, state, ZeroOutput(), Category.MODEL)
    assert not d.retry and d.why == "attempts"
    assert decide(policy, state, net, Category.NETWORK).retry           # network still has budget
    d = decide(policy, state, net, Category.NETWORK)
    assert not d.retry and d.why == "max_retries"
    assert state.by_category == {"network": 2, "model": 1} and state.model_failures == 1


def test_fatal_never_retried_unless_the_server_says_so():
    policy = Retry()
    assert decide(policy, RetryState(), status_error(401), Category.FATAL).why == "fatal"
    assert decide(policy, RetryState(), status_error(400), Category.FATAL).why == "fatal"
    assert decide(policy, RetryState(), status_error(400, {"x-should-retry": "true"}), Category.FATAL).retry
    d = decide(policy, RetryState(), status_error(503, {"x-should-retry": "false"}), Category.TRANSIENT)
    assert not d.retry and d.why == "vetoed"


def test_should_retry_veto_and_stop():
    seen = []

    def veto(exc, category, state):
        seen.append((category, state.retries))
        return False if category is Category.NETWORK else None
    policy = Retry(should_retry=veto, wait=tenacity.wait_none())
    assert decide(policy, RetryState(), ConnectionResetError(), Category.NETWORK).why == "vetoed"
    assert decide(policy, RetryState(), status_error(503), Category.TRANSIENT).retry
    assert seen == [(Category.NETWORK, 0), (Category.TRANSIENT, 0)]
    stop = Retry(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    state = RetryState()
    assert decide(stop, state, status_error(503), Category.TRANSIENT).retry
    assert decide(stop, state, status_error(503), Category.TRANSIENT).why == "stop"


def test_waits_per_category_and_named_backoffs():
    policy = Retry(wait=tenacity.wait_fixed(1), waits={Category.NETWORK: tenacity.wait_fixed(0.1)},
                   respect_retry_after=False)
    assert decide(policy, RetryState(), ConnectionResetError(), Category.NETWORK).delay_s == 0.1
    assert decide(policy, RetryState(), status_error(503), Category.TRANSIENT).delay_s == 1.0

    def at(wait, n):
        rs = tenacity.RetryCallState(None, None, (), {})
        rs.attempt_number = n
        return wait(rs)
    assert [at(backoff("exponential", 0.5, 4), n) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 4, 4]
    assert [at(backoff("linear", 0.5, 2), n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 1.5, 2.0, 2.0]
    assert at(backoff("fixed", 0.3), 9) == 0.3
    assert 0.5 <= at(backoff("fixed-jitter", 0.5), 3) <= 1.0
    assert 0 <= at(backoff("full-jitter", 0.5, 8), 6) <= 8
    # the OpenAI SDK's own: min(0.5 * 2**n, 8) * (1 - 0.25 * U)
    assert [at(wait_openai(rng=lambda: 0.0), n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1, 2, 4, 8, 8]
    assert at(wait_openai(rng=lambda: 1.0), 1) == 0.375
    with pytest.raises(ValueError, match="unknown backoff"):
        backoff("polynomial")


def test_bad_policies_are_refused():
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=0)
    with pytest.raises(ValueError, match="max_retries"):
        Retry(max_retries=-1)
    with pytest.raises(ValueError, match="inter_token_s"):
        Timeouts(inter_token_s=0)
