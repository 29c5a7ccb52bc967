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
