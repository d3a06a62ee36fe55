"""The SDK stays light: importing it (and the integrations' shared code) imports no model client library, and
each integration imports its own client and no other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ("openai", "anthropic", "litellm", "langchain_core")


def imported(statement: str) -> list[str]:
    """The client libraries in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted(m for m in {CLIENTS!r} if m in sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT / "sdk",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"},  # nothing fetched
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_fleet_agent_needs_no_client() -> None:
    statement = "import fleet_agent, fleet_agent.integrations, fleet_agent.integrations.calls"
    assert imported(statement + ", fleet_agent.integrations.usage") == []


@pytest.mark.parametrize(
    ("module", "clients"),
    [
        ("openai", ["openai"]),
        ("anthropic", ["anthropic"]),
        ("litellm", ["litellm", "openai"]),  # LiteLLM imports the OpenAI client itself
        ("langchain", ["langchain_core"]),
    ],
)
def test_each_integration_imports_its_client_and_no_other(module: str, clients: list[str]) -> None:
    assert imported(f"import fleet_agent.integrations.{module}") == clients
