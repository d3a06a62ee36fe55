"""`make demo`, the OpenTelemetry-only agent: no SDK in its calls, only an OTLP exporter (docs/otlp.md).

The agent enrolls once (what ``fleet-agent enroll`` does), makes its OTLP token with its key (``fleet-agent
otlp-token``), then calls a model with the real OpenAI client against the fake provider (emulators/fake_llm.py),
each call in a span with the GenAI conventions' attributes, exported by the OpenTelemetry SDK to fleet-otlp. Its
spend shows up beside the SDK agents', counted by the same path.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests
from fleet_agent import FleetAgent, Registration, otlp_token
from fleet_agent.identity import AgentKey
from rich.console import Console
from rich.table import Table

from emulators import demo_identity
from emulators.fake_llm import FakeLLM

AGENT = Registration(
    agent_id="acme-otel-support",
    tenant="acme",
    name="Support bot (OpenTelemetry only)",
    agent_type="llm-chat",
    version="1.0.0",
    owner="ann@acme.com",
)
MODEL = "gpt-4o-mini"
CALLS = 12


def _wait(condition: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    return None


def _enrolled(api: Any) -> Any:
    def key_id() -> str | None:
        try:
            return (api.get(f"/v1/agents/{AGENT.agent_id}").get("identity") or {}).get("key_id")
        except requests.HTTPError:  # 404 until the registration is processed
            return None

    return key_id


def _enroll(env: dict[str, str], api: Any, keys_dir: Path) -> AgentKey | None:
    token = demo_identity.enrollment_tokens(api, [AGENT])[AGENT.tenant]
    path = demo_identity.key_path(keys_dir, AGENT.agent_id)
    with FleetAgent(AGENT, project=env["GOOGLE_CLOUD_PROJECT"], enrollment_token=token, key_path=path) as agent:
        agent.register()
    if not _wait(_enrolled(api)):
        return None
    return AgentKey.load(path)


def _calls(env: dict[str, str], token: str) -> int:
    """CALLS chat calls, each in a GenAI span exported to fleet-otlp; returns the tokens the provider reported."""
    # lazy: the OpenTelemetry SDK and the OpenAI client only in this scene of the demo
    from openai import OpenAI
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": AGENT.agent_id}))
    exporter = OTLPSpanExporter(
        endpoint=env["FLEET_OTLP_URL"] + "/v1/traces", headers={"Authorization": f"Bearer {token}"}
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("demo")
    tokens = 0
    with FakeLLM() as llm:
        client = OpenAI(base_url=llm.openai_url, api_key="demo")
        for n in range(CALLS):
            with tracer.start_as_current_span(f"chat {MODEL}") as span:
                span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                     "gen_ai.request.model": MODEL})  # fmt: skip
                reply = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"answer ticket {n} about a late parcel"}]
                )
                usage = reply.usage
                assert usage is not None
                span.set_attribute("gen_ai.response.model", reply.model)
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
                tokens += usage.total_tokens
    provider.shutdown()  # exports what is left
    return tokens


def run(env: dict[str, str], api: Any, console: Console, keys_dir: Path) -> bool:
    """Enroll, export CALLS calls' spans, show the agent's spend beside its tenant's; True when all counted."""
    key = _enroll(env, api, keys_dir)
    if key is None:
        console.print("[red]the OpenTelemetry agent's enrollment was not confirmed[/]")
        return False
    token = otlp_token.mint(key, agent_id=AGENT.agent_id, tenant=AGENT.tenant, days=1)
    tokens = _calls(env, token)
    month = _wait(lambda: (m := api.get(f"/v1/agents/{AGENT.agent_id}/usage")["periods"]["month"])["calls"] == CALLS
                  and m)  # fmt: skip
    tenant = api.get(f"/v1/tenants/{AGENT.tenant}/usage")["periods"]["month"]
    table = Table(title="OpenTelemetry only (fleet-otlp)")
    for column in ("who", "calls", "tokens", "spend (USD)"):
        table.add_column(column, justify="left" if column == "who" else "right")
    if month:
        table.add_row(f"{AGENT.agent_id} (OTLP spans)", str(month["calls"]), str(month["tokens"]), month["spend_usd"])
    table.add_row(f"tenant {AGENT.tenant} (SDK agents and it)", str(tenant["calls"]), str(tenant["tokens"]),
                  tenant["spend_usd"])  # fmt: skip
    console.print(table)
    return bool(month) and month["tokens"] == tokens and Decimal(month["spend_usd"]) > 0
