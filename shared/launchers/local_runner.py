"""Runs one local training run and records what became of it (shared/launchers/local.py starts it).

    python -m shared.launchers.local_runner --dir RUN --max-runtime-s N -- argv...

Writes ``pid`` and ``started`` first, then ``exit.json`` with the phase (succeeded, failed,
cancelled), the finish time and a message: always, also when stopped with SIGTERM (a cancel) or
when the run exceeds its runtime (killed, like Kubernetes' activeDeadlineSeconds).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

_stop = {"signal": False}


def _on_term(signum: int, frame: FrameType | None) -> None:
    _stop["signal"] = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--max-runtime-s", type=float, default=3600)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else args.command
    run: Path = args.dir
    signal.signal(signal.SIGTERM, _on_term)
    (run / "pid").write_text(str(os.getpid()))
    (run / "started").write_text(datetime.now(UTC).isoformat())
    child = subprocess.Popen(command)
    phase, message = "failed", ""
    try:
        code = child.wait(timeout=args.max_runtime_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        code, message = -9, f"DeadlineExceeded: ran longer than {args.max_runtime_s:g} s"
    else:
        if (run / "cancel").exists() or _stop["signal"]:
            phase, message = "cancelled", "cancelled"
        elif code == 0:
            phase, message = "succeeded", ""
        else:
            message = f"exit code {code}"
    if phase != "cancelled" and (run / "cancel").exists():
        phase, message = "cancelled", "cancelled"
    exit_doc = {"phase": phase, "code": code, "message": message, "finished_at": datetime.now(UTC).isoformat()}
    tmp = run / "exit.json.tmp"
    tmp.write_text(json.dumps(exit_doc))
    tmp.replace(run / "exit.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
