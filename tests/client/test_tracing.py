"""OpenTelemetry for hardened streams (l0/client/tracing.py), with the SDK's
in-memory span exporter and metric reader: one span per session, a child per
attempt (the failed one with an error status), L0's events as span events,
metrics by mode, category and outcome, and no message text by default."""
from __future__ import annotations

import asyncio

import pytest

import l0
from l0.client.retry import Retry

pytest.importorskip("opentelemetry.sdk", reason="pip install opentelemetry-sdk (make test installs it)")


@pytest.fixture()
def otel():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])

    def metrics():
        out = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        key = (m.name, tuple(sorted(p.attributes.items())))
                        out[key] = getattr(p, "value", None) if hasattr(p, "value") else p.count
        return out
    def tracing(**kw):
        return l0.Tracing(tracer_provider=tp, meter_provider=mp, **kw)
    return tracing, spans, metrics


SECRET = "the launch code is 0000"


def flaky():
    calls = {"n": 0}

    def factory(text):
        calls["n"] += 1

        async def gen():
            if calls["n"] == 1:
                yield "Once upon "
                raise ConnectionResetError(f"reset while sending {SECRET}")
            yield "a time."
        return gen()
    return factory


async def _no_sleep(_s):
    pass


def test_a_resumed_stream_is_one_session_span_with_an_attempt_span_each(otel):
    tracing, spans, metrics = otel
    stream = l0.run(flaky(), trace=tracing(), sleep=_no_sleep, retry=Retry(wait=lambda rs: 0.0))

    async def go():
        return "".join([c async for c in stream])
    assert asyncio.run(go()) == "Once upon a time."
    done = {s.name: [] for s in spans.get_finished_spans()}
    for s in spans.get_finished_spans():
        done[s.name].append(s)
    (session,), attempts = done["l0.stream"], done["l0.attempt"]
    assert [a.attributes["l0.mode"] for a in attempts] == ["fresh", "text"]
    assert all(a.parent.span_id == session.context.span_id for a in attempts)
    assert [a.status.status_code.name for a in attempts] == ["ERROR", "UNSET"]
    assert attempts[0].attributes["l0.failure.category"] == "network"
    assert session.attributes["l0.outcome"] == "complete" and session.attributes["l0.attempts"] == 2
    assert session.attributes["l0.chars"] == len("Once upon a time.")
    assert session.attributes["l0.resume.mode"] == "text" and "l0.time_to_first_token_s" in session.attributes
    names = [e.name for e in attempts[0].events]
    assert names[:3] == ["l0.attempt_start", "l0.first_token", "l0.failure"]
    failure = [e for e in attempts[0].events if e.name == "l0.failure"][0]
    assert failure.attributes["l0.error.type"] == "ConnectionResetError" and "l0.error" not in failure.attributes
    everything = repr([(s.attributes, [(e.name, e.attributes) for e in s.events], s.status.description)
                       for s in spans.get_finished_spans()])
    assert SECRET not in everything and "Once upon" not in everything   # no text unless asked for
    m = metrics()
    assert m[("l0.client.attempts", (("mode", "fresh"),))] == 1 and m[("l0.client.attempts", (("mode", "text"),))] == 1
    assert m[("l0.client.retries", (("category", "network"),))] == 1
    assert m[("l0.client.resumes", (("mode", "text"),))] == 1
    assert m[("l0.client.sessions", (("outcome", "complete"),))] == 1
    assert m[("l0.client.time_to_first_token", ())] == 2


def test_record_content_lets_the_words_in(otel):
    tracing, spans, _ = otel
    stream = l0.run(flaky(), trace=tracing(record_content=True), sleep=_no_sleep, retry=Retry(wait=lambda rs: 0.0))

    async def go():
        return "".join([c async for c in stream])
    asyncio.run(go())
    failures = [e for s in spans.get_finished_spans() for e in s.events if e.name == "l0.failure"]
    assert failures and SECRET in failures[0].attributes["l0.error"]


def test_a_cancelled_stream_ends_its_spans(otel):
    tracing, spans, metrics = otel

    async def forever():
        while True:
            await asyncio.sleep(0.001)
            yield "x "

    async def go():
        stream = l0.run(lambda: forever(), trace=tracing())
        n = 0
        async for _ in stream:
            n += 1
            if n == 3:
                break
        await stream.close()
    asyncio.run(go())
    (session,) = [s for s in spans.get_finished_spans() if s.name == "l0.stream"]
    assert session.attributes["l0.outcome"] == "cancelled" and session.attributes["l0.cancelled"] == "closed"
    assert metrics()[("l0.client.sessions", (("outcome", "cancelled"),))] == 1


def test_tracing_without_the_api_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_otel(name, *a, **kw):
        if name.startswith("opentelemetry"):
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_otel)
    with pytest.raises(ImportError, match=r"l0\[otel\]"):
        l0.Tracing()
