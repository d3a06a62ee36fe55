"""`make bench`, heartbeat section alone: import time, the first event, heartbeat throughput in both configurations,
unsigned and signed.

    python -m tests.bench.heartbeats                       # about 10 minutes with the defaults
    BENCH_ROUNDS=2 python -m tests.bench.heartbeats        # shorter
    BENCH_PROFILE=/tmp/prof python -m tests.bench.heartbeats   # also a py-spy profile of fleet-heartbeats

The same functions as `make bench` (tests/bench/run.py), with the anomaly and failure models in service.
With ``BENCH_PROFILE`` set, ``py-spy`` (``BENCH_PYSPY``, default ``py-spy`` on PATH; install it in a
virtualenv of its own) samples the ``fleet-heartbeats`` process and its workers during the measured
rounds of each configuration and writes ``<dir>/<configuration>.txt`` (collapsed stacks) and
``<dir>/<configuration>-top.txt`` (the functions most often on the stack, inclusive).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emulators.stack import ROOT, Stack
from tests.bench.run import heartbeat_section

PROFILE = os.environ.get("BENCH_PROFILE")
PYSPY = os.environ.get("BENCH_PYSPY", "py-spy")


@contextmanager
def profiled(label: str, stack: Stack) -> Iterator[None]:
    """Sample ``fleet-heartbeats`` (and its worker processes) with py-spy while the block runs."""
    assert PROFILE is not None
    out = Path(PROFILE) / f"{label}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    pid = int(json.loads(stack.pids_file.read_text())["fleet-heartbeats"])
    argv = [PYSPY, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", "50", "-o", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        if out.exists():
            (out.parent / f"{label}-top.txt").write_text("\n".join(top_frames(out)) + "\n")


def top_frames(collapsed: Path, within: str = "process_heartbeat", limit: int = 40) -> list[str]:
    """The functions most often on the stack in samples that pass through ``within``, inclusive, as a
    share of those samples."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if within not in stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        start = next(i for i, f in enumerate(frames) if within in f)
        for name in {f.split(" (")[0] for f in frames[start:]}:
            inclusive[name] += n
    return [f"{total} samples in {within}"] + [f"{n / total:6.1%}  {name}" for name, n in inclusive.most_common(limit)]


def main() -> int:
    lines = heartbeat_section("python -m tests.bench.heartbeats", measure=profiled if PROFILE else None)
    text = "\n".join(lines)
    print(text)
    (ROOT / ".stack-bench-heartbeats.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
