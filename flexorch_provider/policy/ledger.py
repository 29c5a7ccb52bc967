"""What submitted runs used, kept where the tasks run (``$FLEXORCH_STATE_DIR/usage.jsonl``,
default ``$AIRFLOW_HOME/flexorch``): one JSON line per event, appended under a file lock.

- ``check``: a submission passed its team's rules; the run counts as live from here until a
  ``done`` event (its ``run`` tasks have all ended: between retries, between pipeline steps and
  while queued it still counts);
- ``start``/``end``: one try of one job (GPUs, and its timeout as the most it can run);
- ``done``: every job of a checked run has ended (recorded by the next check, or the usage page,
  that finds its tasks ended: :func:`flexorch_provider.policy.admission.close_ended`).

GPU-hours are GPUs × wall time from these events: a running job counts up to now, one whose
worker died before recording its end counts up to its timeout. The file survives restarts of
every Airflow component; with several worker machines it must be on storage they share.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flexorch_provider.paths import state_dir

QUEUED_S = 120.0  # a checked run with no run task at all this long after its check has ended (deleted)
KEEP_S = 8 * 86400  # events older than this are dropped when the file is compacted
COMPACT_BYTES = 4 << 20


def ledger_path() -> Path:
    return state_dir() / "usage.jsonl"


def period_start(per: str, now: float) -> float:
    """The start of the current UTC day or ISO week (Monday)."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if per == "week":
        day -= timedelta(days=day.weekday())
    return day.timestamp()


class Ledger:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or ledger_path()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ledger's lock: a check reads and appends without another check in between."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, event: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # one write per event (appends do not interleave); the newline first: a line torn by a writer that
        # crashed mid-write costs that line only, not the next event too
        line = "\n" + json.dumps({"at": time.time(), **event}, sort_keys=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def events(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn last line of a crashed writer
            if isinstance(event, dict):
                out.append(event)
        return out

    def jobs(self, team: str, now: float) -> list[dict[str, Any]]:
        """Each try of each job of ``team``: {run, job, gpus, start, end, live} (end: recorded, else
        now, or start + timeout once that has passed)."""
        tries: dict[tuple[str, Any], dict[str, Any]] = {}
        ends: dict[tuple[str, Any], float] = {}
        for e in self.events():
            key = (str(e.get("job")), e.get("try"))
            if e.get("t") == "start" and e.get("team") == team:
                tries[key] = e
            elif e.get("t") == "end":
                ends[key] = float(e["at"])
        out = []
        for key, e in tries.items():
            start = float(e["at"])
            cap = e.get("cap")
            end = ends.get(key)
            live = end is None and (cap is None or start + float(cap) > now)
            if end is None:
                end = now if cap is None else min(now, start + float(cap))
            out.append(
                {
                    "run": e.get("run"),
                    "job": e.get("job"),
                    "try": e.get("try"),
                    "gpus": int(e.get("gpus") or 0),
                    "start": start,
                    "end": end,
                    "live": live,
                }
            )
        return out

    def open_jobs(self, team: str, now: float) -> list[dict[str, Any]]:
        """Tries of ``team``'s jobs with a start and no end yet (running, or their worker died)."""
        return [j for j in self.jobs(team, now) if j["live"]]

    def gpu_hours(self, team: str, since: float, now: float) -> float:
        """GPU-hours ``team`` used between ``since`` and ``now``, running jobs included."""
        total = 0.0
        for j in self.jobs(team, now):
            overlap = min(j["end"], now) - max(j["start"], since)
            if overlap > 0:
                total += j["gpus"] * overlap / 3600
        return total

    def pending_runs(self, team: str, now: float) -> dict[str, dict[str, Any]]:
        """``team``'s checked runs with no ``done`` event yet: run id → its check event."""
        events = self.events()
        done = {str(e.get("run")) for e in events if e.get("t") == "done" and e.get("team") == team}
        return {
            str(e.get("run")): e
            for e in events
            if e.get("t") == "check" and e.get("team") == team and str(e.get("run")) not in done
            and now - float(e.get("at", 0)) < KEEP_S
        }  # fmt: skip

    def live_runs(self, team: str, now: float) -> set[str]:
        """Runs of ``team`` from their check until every job of theirs has ended (a ``done`` event),
        and any run with a job running."""
        return {str(j["run"]) for j in self.jobs(team, now) if j["live"]} | set(self.pending_runs(team, now))

    def compact(self, now: float) -> None:
        """Drop events older than KEEP_S once the file is large (call under :meth:`locked`)."""
        try:
            if self.path.stat().st_size < COMPACT_BYTES:
                return
        except FileNotFoundError:
            return
        keep = [e for e in self.events() if now - float(e.get("at", 0)) < KEEP_S]
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines("\n" + json.dumps(e, sort_keys=True) for e in keep)
        os.replace(tmp, self.path)
