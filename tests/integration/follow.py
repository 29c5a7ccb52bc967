"""Following a job from a test, the way the trigger does: poll until it ends, read its whole log."""

from __future__ import annotations

import time
from typing import Any


def wait_finished(backend: Any, handle: Any, timeout: float, interval: float = 0.2, seen: list | None = None) -> Any:
    """Poll until the job ends; every status seen is appended to ``seen`` when given."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = backend.poll([handle])[handle.job_id]
        if seen is not None:
            seen.append(status)
        if status.state.finished:
            return status
        time.sleep(interval)
    raise AssertionError(f"{handle.target} job {handle.job_id} did not finish in {timeout}s")


def all_lines(backend: Any, handle: Any) -> list[str]:
    """Every complete log line so far, read chunk by chunk from cursor 0."""
    lines: list[str] = []
    cursor: Any = 0
    while True:
        chunk = backend.read_logs(handle, cursor)
        lines += chunk.lines
        if chunk.cursor == cursor:
            return lines
        cursor = chunk.cursor


# Values that must reach a job unchanged on every target (trailing newlines, \r\n, quotes,
# shell syntax, a long value), and a job that prints what it got as one JSON line.
HOSTILE_ENV = {
    "TRAILING": "value\n\n",
    "CRLF": "line one\r\nline two\r\n",
    "QUOTES": "'single' \"double\" `back` $(id) ${HOME} \\ ; | & > < *",
    "UNICODE": "Ω 🚀",
    "LONG": "x" * 20_000 + "\n",
}
_NAMES = sorted(HOSTILE_ENV)
PRINT_ENV = ["python3", "-c", f"import json, os; print(json.dumps({{k: os.environ[k] for k in {_NAMES!r}}}))"]


# A real collective for multi-node tests: PyTorch's CPU build (Debian's python3-torch) forms one group
# with gloo over TCP, all-reduces each process's rank + 1, and every process prints the sum.
ALLREDUCE = """\
import os
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
node = int(os.environ["FLEXORCH_NODE_RANK"])
address = os.environ["FLEXORCH_NODE_ADDRS"].split(",")[node]
print(f"rank {dist.get_rank()} of {dist.get_world_size()} on node {node} ({os.uname().nodename}) at {address}: "
      f"sum {value.item():g}", flush=True)
dist.destroy_process_group()
"""
