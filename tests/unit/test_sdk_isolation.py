"""The agent SDK installs and imports without the server's dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk"
#: An optional extra's client, imported by its own integration module only (fleet_agent/integrations/<stem>.py).
EXTRAS = {"openai": "openai", "anthropic": "anthropic", "litellm": "litellm", "langchain": "langchain_core"}


def test_sdk_depends_only_on_pubsub_pydantic_and_its_signing_libraries() -> None:
    deps = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]["dependencies"]
    names = sorted(d.split(">")[0].split("=")[0].split("<")[0] for d in deps)
    assert names == ["cryptography", "google-cloud-pubsub", "pydantic", "rfc8785"]


def test_sdk_never_imports_the_server() -> None:
    allowed = {"fleet_agent", "google", "pydantic", "cryptography", "rfc8785", "__future__"}
    for path in (SDK / "fleet_agent").rglob("*.py"):
        own = EXTRAS.get(path.stem) if path.parent.name == "integrations" else None
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top == own or top in sys.stdlib_module_names, (
                    f"{path.relative_to(SDK)} imports {name}"
                )


def test_importing_the_sdk_loads_neither_grpc_nor_the_server() -> None:
    code = (
        "import sys, fleet_agent\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'shared')"
        " or m.startswith(('google.cloud.pubsub', 'google.api_core', 'google.protobuf'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SDK.parent / "docs"
    )
    assert out.stdout.strip() == "[]"
