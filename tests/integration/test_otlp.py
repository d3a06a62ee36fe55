"""fleet-otlp end to end: the real OpenTelemetry SDK and OTLP/HTTP exporter, the real OpenAI client calling the
fake provider (emulators/fake_llm.py), the agent's token made with its enrolled key (docs/otlp.md).

Spend must equal the tokens times the tenant's price exactly; re-exported spans, however regrouped, count
nothing more; a bad or absent token is refused and counts nothing; spans that are not model calls are ignored.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
import requests
from fleet_agent import otlp_token
from fleet_agent.identity import AgentKey
from google.cloud.firestore_v1.base_query import FieldFilter
from google.protobuf import json_format
from openai import OpenAI
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from emulators.fake_llm import FakeLLM
from tests.integration.conftest import wait_for
from tests.integration.helpers import agent_doc, agent_key, log_lines, publish, registration

pytestmark = pytest.mark.integration

CHAT_MODEL, EMBED_MODEL = "gpt-4o-mini", "text-embedding-3-small"
#: The tenant's own prices (tenant overrides win over any catalog): spend is tokens x these, exactly.
PRICES = {CHAT_MODEL: (Decimal("0.00000015"), Decimal("0.0000006")), EMBED_MODEL: (Decimal("0.00000002"), Decimal(0))}


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


def enrolled(publisher: Any, firestore: Any, agent_id: str, tenant: str) -> AgentKey:
    publish(publisher, registration(agent_id, tenant=tenant))
    wait_for(lambda: ((agent_doc(firestore, agent_id) or {}).get("identity") or {}).get("keys"))
    return agent_key(agent_id)


def exporter(stack: Any, token: str | None, **kw: Any) -> OTLPSpanExporter:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return OTLPSpanExporter(endpoint=stack.env["FLEET_OTLP_URL"] + "/v1/traces", headers=headers, timeout=20, **kw)


def traced(stack: Any, token: str | None, service: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    """A tracer provider exporting to fleet-otlp, each span also kept (to export again)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    kept = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter(stack, token)))
    provider.add_span_processor(SimpleSpanProcessor(kept))
    return provider, kept


def chat(tracer: Any, client: OpenAI, prompt: str) -> tuple[int, int]:
    """A chat call in a span with the GenAI conventions' attributes, as an instrumentation writes them."""
    with tracer.start_as_current_span(f"chat {CHAT_MODEL}", kind=SpanKind.CLIENT) as span:
        span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                             "gen_ai.request.model": CHAT_MODEL})  # fmt: skip
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": prompt}])
        assert reply.usage is not None
        usage = reply.usage
        span.set_attributes({"gen_ai.response.model": reply.model, "gen_ai.usage.input_tokens": usage.prompt_tokens,
                             "gen_ai.usage.output_tokens": usage.completion_tokens})  # fmt: skip
        return reply.usage.prompt_tokens, reply.usage.completion_tokens


def embed(tracer: Any, client: OpenAI, text: str) -> tuple[int, int]:
    with tracer.start_as_current_span(f"embeddings {EMBED_MODEL}", kind=SpanKind.CLIENT) as span:
        span.set_attributes({"gen_ai.operation.name": "embeddings", "gen_ai.system": "openai",
                             "gen_ai.request.model": EMBED_MODEL})  # fmt: skip
        reply = client.embeddings.create(model=EMBED_MODEL, input=text)
        span.set_attribute("gen_ai.usage.input_tokens", reply.usage.prompt_tokens)
        return reply.usage.prompt_tokens, 0


def cost(model: str, tokens: Sequence[tuple[int, int]]) -> Decimal:
    inp, out = PRICES[model]
    return sum((i * inp + o * out for i, o in tokens), Decimal(0))


def month(api: Any, agent_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/agents/{agent_id}/usage")
    assert response.status_code == 200, response.text
    return dict(response.json()["periods"]["month"])


def set_prices(api: Any, tenant: str) -> None:
    for model, (inp, out) in PRICES.items():
        response = api.send(
            "PUT", f"/v1/prices/{model}", {"input_usd": str(inp), "output_usd": str(out)}, tenant=tenant
        )
        assert response.status_code == 200, response.text
    time.sleep(1.2)  # FLEET_CONFIG_CACHE_S=1 in the test stack: the functions see the tenant's prices


def post(stack: Any, spans: Sequence[ReadableSpan], authorization: str | None) -> requests.Response:
    headers = {"Content-Type": "application/x-protobuf", **({"Authorization": authorization} if authorization else {})}
    body = encode_spans(spans).SerializeToString()
    return requests.post(stack.env["FLEET_OTLP_URL"] + "/v1/traces", data=body, headers=headers, timeout=20)


def test_openai_spans_count_exactly_once_and_bad_tokens_count_nothing(
    stack: Any, publisher: Any, firestore: Any, api: Any, llm: FakeLLM
) -> None:
    tenant, agent_id = f"t-{uuid.uuid4().hex[:10]}", f"it-{uuid.uuid4().hex[:12]}"
    key = enrolled(publisher, firestore, agent_id, tenant)
    set_prices(api, tenant)
    token = otlp_token.mint(key, agent_id=agent_id, tenant=tenant, days=1)
    provider, kept = traced(stack, token, "otel-only-bot")
    tracer = provider.get_tracer("test")
    client = OpenAI(base_url=llm.openai_url, api_key="x")
    with tracer.start_as_current_span("handle ticket"):  # not a model call: ignored
        chats = [chat(tracer, client, f"summarise ticket number {n} please") for n in range(3)]
        embeds = [embed(tracer, client, "three little words")]
    provider.force_flush()
    expected = cost(CHAT_MODEL, chats) + cost(EMBED_MODEL, embeds)
    totals = wait_for(lambda: (m := month(api, agent_id))["calls"] == 4 and m, timeout=30)
    assert Decimal(totals["spend_usd"]) == expected > 0
    assert totals["input_tokens"] == sum(i for i, _ in chats + embeds)
    assert totals["output_tokens"] == sum(o for _, o in chats) and totals["failures"] == 0
    lines = [x for x in log_lines(stack.state_dir, "fleet-otlp") if x.get("agent_id") == agent_id]
    assert sum(x.get("ignored", 0) for x in lines) == 1 and sum(x.get("calls", 0) for x in lines) == 4

    # Re-exported by another exporter (gzip), regrouped: one span alone, then all of them in another order.
    spans = list(kept.get_finished_spans())
    again = exporter(stack, token, compression=Compression.Gzip)
    assert again.export(spans[1:2]) == SpanExportResult.SUCCESS
    assert again.export(spans[::-1]) == SpanExportResult.SUCCESS
    # And one new call (made where nothing exported it yet) among old ones: only it counts.
    unsent = InMemorySpanExporter()
    local = TracerProvider(resource=Resource.create({"service.name": "otel-only-bot"}))
    local.add_span_processor(SimpleSpanProcessor(unsent))
    chats.append(chat(local.get_tracer("test"), client, "one more"))
    assert again.export([*spans[:3], *unsent.get_finished_spans()]) == SpanExportResult.SUCCESS
    totals = wait_for(lambda: (m := month(api, agent_id))["calls"] == 5 and m, timeout=30)
    time.sleep(1)
    totals = month(api, agent_id)
    assert totals["calls"] == 5
    assert Decimal(totals["spend_usd"]) == cost(CHAT_MODEL, chats) + cost(EMBED_MODEL, embeds)
    lines = [x for x in log_lines(stack.state_dir, "fleet-otlp") if x.get("agent_id") == agent_id]
    # Every re-sent model-call span, once each: 1, then 4 (the parent span is no call), then the 3 old chats
    # beside the new one, in one request: its batch met their markers, and the new call was committed alone.
    assert [(x.get("calls"), x.get("duplicates")) for x in lines[-3:]] == [(0, 1), (0, 4), (1, 3)]

    # Refused before anything is counted: no token, another key's token, not a token (logged only), a token of
    # the agent's key altered (twice: recorded once) or with an absurd expiry (401, not 500).
    with local.get_tracer("test").start_as_current_span("handle ticket 3"):
        chat(local.get_tracer("test"), client, "never counted")
    fresh = unsent.get_finished_spans()[-2:]
    other = AgentKey.generate()
    prefix, payload_text, sig_text = token.split(".")
    payload = json.loads(otlp_token.unb64(payload_text))
    altered = f"{prefix}.{otlp_token.b64(otlp_token.canonical({**payload, 'exp': payload['exp'] - 60}))}.{sig_text}"
    absurd = f"{prefix}.{otlp_token.b64(json.dumps({**payload, 'exp': 10**20}).encode())}.{sig_text}"
    for authorization, status in [
        (None, 401),
        ("Bearer " + otlp_token.mint(other, agent_id=agent_id, tenant=tenant, days=1), 401),
        ("Bearer not-a-token", 401),
        ("Bearer " + altered, 401),
        ("Bearer " + altered, 401),
        ("Bearer " + absurd, 401),
    ]:
        response = post(stack, fresh, authorization)
        assert response.status_code == status and response.json()["error"]["reason"], response.text
    assert exporter(stack, None).export(fresh) == SpanExportResult.FAILURE
    # Bodies refused whole (nothing counted, so the exporter knows): a gzip stream cut short, a chunked body
    # over the limit (read no further than it).
    url = stack.env["FLEET_OTLP_URL"] + "/v1/traces"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-protobuf"}
    cut = gzip.compress(encode_spans(fresh).SerializeToString())[:-8]
    response = requests.post(url, data=cut, timeout=20, headers={**headers, "Content-Encoding": "gzip"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "bad_gzip"), response.text
    chunked = (b"\x00" * 65_536 for _ in range(80))  # 5 MiB, no Content-Length
    response = requests.post(url, data=chunked, timeout=20, headers=headers)
    assert response.status_code == 413, response.text
    time.sleep(1.5)
    assert month(api, agent_id)["calls"] == 5
    query = firestore.collection("rejections").where(filter=FieldFilter("claimed_agent_id", "==", agent_id))
    refused = sorted((r["code"], r["source"]) for r in (d.to_dict() for d in query.get()))
    assert refused == [("bad_signature", "fleet-otlp"), ("token_expired", "fleet-otlp")]


def test_a_span_naming_another_agent_is_refused_and_json_reports_partial_success(
    stack: Any, publisher: Any, firestore: Any, api: Any
) -> None:
    tenant, agent_id = f"t-{uuid.uuid4().hex[:10]}", f"it-{uuid.uuid4().hex[:12]}"
    key = enrolled(publisher, firestore, agent_id, tenant)
    set_prices(api, tenant)
    provider = TracerProvider()
    kept = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    with provider.get_tracer("t").start_as_current_span("chat m") as span:
        span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": CHAT_MODEL,
                             "gen_ai.usage.input_tokens": 10, "gen_ai.agent.id": "somebody-else"})  # fmt: skip
    token = otlp_token.mint(key, agent_id=agent_id, tenant=tenant, days=1)
    response = post(stack, kept.get_finished_spans(), f"Bearer {token}")
    assert (response.status_code, response.json()["error"]["code"]) == (403, "agent_mismatch")
    time.sleep(1.2)
    assert month(api, agent_id)["calls"] == 0

    # OTLP/JSON (hex ids): a good span counted, a span that cannot be a record refused alone (partial success).
    kept.clear()
    for name, extra in (("good", {}), ("bad", {"gen_ai.usage.reasoning.output_tokens": 3})):
        with provider.get_tracer("t").start_as_current_span(f"chat {name}") as span:
            usage = {"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 2, **extra}
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": CHAT_MODEL, **usage})
    body = json_format.MessageToDict(encode_spans(kept.get_finished_spans()))
    for span_json in body["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for field in ("traceId", "spanId"):
            span_json[field] = base64.b64decode(span_json[field]).hex()
    response = requests.post(stack.env["FLEET_OTLP_URL"] + "/v1/traces", json=body, timeout=20,
                             headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "reasoning_tokens" in partial["errorMessage"]
    totals = wait_for(lambda: (m := month(api, agent_id))["calls"] == 1 and m, timeout=20)
    assert Decimal(totals["spend_usd"]) == cost(CHAT_MODEL, [(10, 2)])

    # A call with a model and no token attribute at all: counted unpriced (the alert), never $0 free.
    kept.clear()
    with provider.get_tracer("t").start_as_current_span("chat tokenless") as span:
        span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                             "gen_ai.request.model": CHAT_MODEL})  # fmt: skip
    assert post(stack, kept.get_finished_spans(), f"Bearer {token}").status_code == 200
    totals = wait_for(lambda: (m := month(api, agent_id))["calls"] == 2 and m, timeout=20)
    assert (totals["unpriced_calls"], Decimal(totals["spend_usd"])) == (1, cost(CHAT_MODEL, [(10, 2)]))


def test_the_openai_v2_instrumentation_spans_are_counted(
    stack: Any, publisher: Any, firestore: Any, api: Any, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    tenant, agent_id = f"t-{uuid.uuid4().hex[:10]}", f"it-{uuid.uuid4().hex[:12]}"
    key = enrolled(publisher, firestore, agent_id, tenant)
    set_prices(api, tenant)
    token = otlp_token.mint(key, agent_id=agent_id, tenant=tenant, days=1)
    provider, kept = traced(stack, token, "instrumented")
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = OpenAI(base_url=llm.openai_url, api_key="x")
        replies = [client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": f"hi {n}"}])
                   for n in range(2)]  # fmt: skip
    finally:
        instrumentor.uninstrument()
    provider.force_flush()
    tokens = [(r.usage.prompt_tokens, r.usage.completion_tokens) for r in replies if r.usage]
    assert len(tokens) == 2 and all(t[0] > 0 for t in tokens)
    totals = wait_for(lambda: (m := month(api, agent_id))["calls"] == 2 and m, timeout=30)
    assert Decimal(totals["spend_usd"]) == cost(CHAT_MODEL, tokens) > 0

    # The instrumentation's own spans exported again (another exporter, gzip; then the same protobuf posted
    # twice): counted once.
    spans = list(kept.get_finished_spans())
    named = {(a := s.attributes or {}).get("gen_ai.provider.name") or a.get("gen_ai.system") for s in spans}
    assert len(spans) == 2 and named == {"openai"}
    assert exporter(stack, token, compression=Compression.Gzip).export(spans) == SpanExportResult.SUCCESS
    for _ in range(2):
        assert post(stack, spans[::-1], f"Bearer {token}").status_code == 200
    time.sleep(1.5)
    totals = month(api, agent_id)
    assert (totals["calls"], Decimal(totals["spend_usd"])) == (2, cost(CHAT_MODEL, tokens))
    lines = [x for x in log_lines(stack.state_dir, "fleet-otlp") if x.get("agent_id") == agent_id]
    assert [(x.get("calls"), x.get("duplicates")) for x in lines[-3:]] == [(0, 2)] * 3
