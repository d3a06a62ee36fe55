"""The commands stop with one clear message naming the install command when a tool is missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "emulators" / "check_tools.sh"


def run_with(tmp_path: Path, tools: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the check with a PATH holding only stand-ins for the named tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in tools.items():
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    # Folders holding a real gcloud or java are left out (the script needs only bash builtins then).
    real = [p for p in ("/usr/bin", "/bin") if not any((Path(p) / t).exists() for t in ("gcloud", "java"))]
    env = {**os.environ, "PATH": ":".join([str(bin_dir), *real])}
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


def test_missing_gcloud_names_its_install_command(tmp_path: Path) -> None:
    result = run_with(tmp_path, {"java": "exit 0"})
    assert result.returncode == 1
    assert "gcloud CLI is missing" in result.stderr and "apt-get install google-cloud-cli" in result.stderr


def test_missing_emulators_name_their_packages(tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    (sdk / "platform").mkdir(parents=True)
    result = run_with(tmp_path, {"gcloud": f"echo {sdk}", "java": "exit 0"})
    assert result.returncode == 1
    assert "Pub/Sub emulator is missing" in result.stderr
    assert "google-cloud-cli-pubsub-emulator" in result.stderr


def test_all_present_passes_quietly(tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    for component in ("pubsub-emulator", "cloud-firestore-emulator"):
        (sdk / "platform" / component).mkdir(parents=True)
    result = run_with(tmp_path, {"gcloud": f"echo {sdk}", "java": "exit 0"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
