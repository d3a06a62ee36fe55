"""The SDK stays light: importing it (and the integrations' shared code) imports no model client library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ("openai", "anthropic", "litellm", "langchain_core")


def test_import_fleet_agent_needs_no_client() -> None:
    probe = (
        "import sys, fleet_agent, fleet_agent.integrations, fleet_agent.integrations.calls\n"
        f"print(sorted(m for m in {CLIENTS!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT / "sdk", capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_each_integration_imports_its_client() -> None:
    probe = "import sys, fleet_agent.integrations.openai\nprint('openai' in sys.modules, 'anthropic' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT / "sdk", capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "True False"
