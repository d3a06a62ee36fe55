"""`python -m tests.bench.otlp`: OTLP ingest, spans per second end to end, beside the cost-batch path's records
per second measured in the same run on the same stack (tests/bench/costs.py ``drained``).

OTLP: each agent posts ExportTraceServiceRequests of 200 chat spans (protobuf, its own token) to fleet-otlp,
from 8 client threads; a request's answer comes once its spans are counted, so the window is first post to
last answer. The agents' keys are bound in their documents directly (what an enrollment leaves there): the
bench measures ingest, not enrollment. Cost path: the same number of records in SDK batches of 200, published
with push paused, then delivered (its pipeline's own rate).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import requests
from fleet_agent import otlp_token
from fleet_agent.identity import AgentKey
from google.cloud import firestore
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from emulators.stack import ROOT, Stack
from shared.domain import identity
from tests.bench.costs import NO_RUNAWAY, Api, drained, register
from tests.bench.run import UNSIGNED, LogCounter, publisher

AGENTS = int(os.environ.get("BENCH_OTLP_AGENTS", 10))
SPANS_PER_AGENT = int(os.environ.get("BENCH_OTLP_SPANS", 2000))
SPANS_PER_REQUEST = 200
THREADS = 8


def request_of(n: int, count: int) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    end = time.time_ns()
    trace = uuid.uuid4().bytes
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}
    for i in range(count):
        span = scope.spans.add()
        span.trace_id, span.span_id, span.name = trace, (n * count + i + 1).to_bytes(8, "big"), "chat gpt-4o"
        span.start_time_unix_nano, span.end_time_unix_nano = end - 300_000_000, end
        span.attributes.extend(KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs.items())
        span.attributes.extend(
            KeyValue(key=k, value=AnyValue(int_value=v))
            for k, v in {"gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 40}.items()
        )
    return request.SerializeToString()


def bind_keys(agents: list[str]) -> dict[str, AgentKey]:
    """Each agent's key written into its document, as an enrollment would (shared/domain/identity.py bind)."""
    client = firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    keys = {a: AgentKey.generate() for a in agents}
    for agent_id, key in keys.items():
        bound = identity.bind(None, key.public_key, token_id="0" * 16, at=datetime.now(UTC))
        client.collection("agents").document(agent_id).update({"identity": bound})
    return keys


def otlp_rate(stack: Stack, agents: list[str], tenant: str, per_agent: int) -> tuple[int, float, int, int]:
    """Spans counted, seconds, and the Firestore reads and writes fleet-otlp logged."""
    keys = bind_keys(agents)
    time.sleep(1.5)  # the functions' agent cache (FLEET_CONFIG_CACHE_S) sees the keys
    url = stack.env["FLEET_OTLP_URL"] + "/v1/traces"
    jobs = []
    for agent_id in agents:
        token = otlp_token.mint(keys[agent_id], agent_id=agent_id, tenant=tenant, days=1)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-protobuf"}
        jobs += [(headers, request_of(n, SPANS_PER_REQUEST)) for n in range(per_agent // SPANS_PER_REQUEST)]
    counter = LogCounter(stack.logs / "fleet-otlp.log")
    session = requests.Session()

    def post(job: tuple[dict[str, str], bytes]) -> None:
        response = session.post(url, data=job[1], headers=job[0], timeout=120)
        response.raise_for_status()

    start = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(post, jobs))
    seconds = time.monotonic() - start
    lines = [x for x in counter.poll() if x.get("outcome") == "accepted"]
    spans = sum(x.get("calls", 0) for x in lines)
    return spans, seconds, sum(x["firestore_reads"] for x in lines), sum(x["firestore_writes"] for x in lines)


def main() -> list[str]:
    stack = Stack(ROOT / ".stack-bench-otlp", function_env=UNSIGNED, create_admin_key=True)
    try:
        stack.up()
        client = publisher()
        tenant = "bench-otlp"
        Api(stack).call("PUT", f"/v1/tenants/{tenant}/protection", NO_RUNAWAY)
        otel_agents = [f"bench-otel-{i:03d}" for i in range(AGENTS)]
        cost_agents = [f"bench-cb-{i:03d}" for i in range(AGENTS)]
        register(stack, client, [*otel_agents, *cost_agents, "bench-otel-warm"], tenant)
        print("warm-up ...", file=sys.stderr)
        otlp_rate(stack, ["bench-otel-warm"], tenant, SPANS_PER_REQUEST)
        print("OTLP spans ...", file=sys.stderr)
        spans, seconds, reads, writes = otlp_rate(stack, otel_agents, tenant, SPANS_PER_AGENT)
        print("cost batches (pipeline only) ...", file=sys.stderr)
        base = drained(stack, client, "cost batches of 200 (SDK), pushed", cost_agents, SPANS_PER_AGENT)
    finally:
        stack.down()
    lines = [
        "| path | records | seconds | records/s | writes/record | reads/record |",
        "|---|---|---|---|---|---|",
        f"| OTLP: {SPANS_PER_REQUEST} spans a request, {THREADS} client threads -> fleet-otlp | {spans} | "
        f"{seconds:.1f} | {spans / seconds:.0f} | {writes / spans:.3f} | {reads / spans:.4f} |",
        f"| {base.label} | {base.records} | {base.seconds:.1f} | {base.rate:.0f} | {base.writes / base.records:.3f} | "
        f"{base.reads / base.records:.4f} |",
        f"| **OTLP / cost batches** | | | **{spans / seconds / base.rate:.2f}x** | | |",
    ]
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    main()
