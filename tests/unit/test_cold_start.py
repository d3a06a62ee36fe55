"""Cold start: importing the functions' module (as functions-framework does, after loading itself) pulls in
no heavy client or library and none of our modules that only some entry points need."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Imported on first use (each with a ``# lazy:`` comment), never by ``import main``.
LAZY = (
    "google.cloud.firestore",
    "google.cloud.pubsub_v1",
    "google.cloud.storage",
    "numpy",
    "sklearn",
    "kubernetes",
    "matplotlib",
    "slack_bolt",
    "slack_sdk",
    "shared.ml",
    "shared.domain.jobs",
    "shared.domain.job_costs",
    "shared.launchers",
)


def test_importing_main_leaves_the_heavy_modules_for_first_use() -> None:
    code = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(ROOT / 'functions')!r})\n"
        "import functions_framework\n"
        "import main\n"
        f"lazy = {LAZY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(lazy))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
