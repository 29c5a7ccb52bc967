"""What submitted runs used: one record per event in the flexorch store (``usage``; the default
store's file is ``$FLEXORCH_STATE_DIR/usage.jsonl``), checks serialized by the store's lock.

- ``check``: a submission passed its team's rules; the run counts as live from here until a
  ``done`` event (its ``run`` tasks have all ended: between retries, between pipeline steps and
  while queued it still counts);
- ``start``/``end``: one try of one job (GPUs, and its timeout as the most it can run);
- ``done``: every job of a checked run has ended (recorded by the next check, or the usage page,
  that finds its tasks ended: :func:`flexorch_provider.policy.admission.close_ended`).

GPU-hours are GPUs × wall time from these events: a running job counts up to now, one whose
worker died before recording its end counts up to its timeout. The ledger survives restarts of
every Airflow component, and is one for all machines with a shared store.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from flexorch_provider.store import Store, get_store

QUEUED_S = 120.0  # a checked run with no run task at all this long after its check has ended (deleted)
KEEP_S = 8 * 86400  # events older than this are dropped when the ledger is compacted
SPACE = "usage"  # the store's records and lock of the ledger


def period_start(per: str, now: float) -> float:
    """The start of the current UTC day or ISO week (Monday)."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if per == "week":
        day -= timedelta(days=day.weekday())
    return day.timestamp()


class Ledger:
    """The ledger in the flexorch store (:func:`flexorch_provider.store.get_store`): the same on
    every Airflow machine when the store is shared."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store if store is not None else get_store()

    def locked(self) -> AbstractContextManager[None]:
        """Hold the ledger's lock: a check reads and appends without another check in between (on
        any machine, with a shared store)."""
        return self.store.locked(SPACE)

    def append(self, event: dict[str, Any]) -> None:
        self.store.append(SPACE, {"at": time.time(), **event})

    def events(self) -> list[dict[str, Any]]:
        return self.store.records(SPACE)

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
        """Drop events older than KEEP_S (call under :meth:`locked`)."""
        self.store.prune(SPACE, now - KEEP_S)
