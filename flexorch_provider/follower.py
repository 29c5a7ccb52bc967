"""Following a job: the one loop body behind the worker's follow and the trigger.

::

    status = backend.poll([handle])            (the trigger: one batched poll per interval)
    step = follower.observe(status)           read the log as far as the state allows, mask it,
                                               decide: step.event is the final event, or None
                                               (or, past ``pending_until``, a job still pending)
    follower.failed(error)                     a poll or read that failed: None while patience
                                               lasts, else the error event

:class:`Follower` is synchronous (a trigger runs ``observe`` in a thread) and logs nothing
itself: a step carries the lines and notes, and the caller logs them where its logs go
(the task log from the worker, the trigger's log in the triggerer). So a job's final event
is built in one place, whoever sees the end first.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from flexorch_provider.backends.base import Backend, JobHandle, JobState, JobStatus, LogCursor
from flexorch_provider.exceptions import HostError
from flexorch_provider.masking import Masker
from flexorch_provider.records import JobEvent

DRAIN_S = 2.0  # longest a running job's log backlog is read before its status is asked again
FINAL_DRAIN_S = 30.0  # longest a finished job's remaining log is read before its event is built
MAX_CONSECUTIVE_ERRORS = 5  # failed polls or reads in a row before following gives up
TAIL_LINES = 30


class Log(Protocol):
    def info(self, msg: Any, /, *args: Any) -> Any: ...


@dataclass
class Step:
    """What one look at a job found: log lines (masked), status notes, and the final event
    once the job has ended."""

    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    event: JobEvent | None = None
    wrote: bool = False  # the log grew during this look

    def log_to(self, log: Log) -> None:
        """Notes, then the job's own lines, each as one record (the task log, or the trigger's)."""
        for text in [*self.notes, *self.lines]:
            log.info("%s", text)


class Follower:
    """Follows one job: its log cursor, the last lines (for a failure's tail), its errors."""

    def __init__(
        self,
        backend: Backend,
        handle: JobHandle,
        *,
        cursor: LogCursor = 0,
        tail_lines: int = TAIL_LINES,
        mask: Masker | None = None,
        pending_until: float | None = None,
    ) -> None:
        self.backend = backend
        self.pending_until = pending_until  # epoch seconds: a job still pending then is reported (max_pending)
        self.handle = handle
        self.cursor = cursor
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.mask = mask or Masker([])
        self.errors = 0
        self._said = ""
        self._first = handle.first_status

    def poll(self) -> JobStatus:
        """This job's status on its own (the trigger asks in batches instead); the first time, the
        status its submit answered with, where the backend gave one (no second round trip)."""
        first, self._first = self._first, None
        if first is not None:
            return first
        return self.backend.poll([self.handle])[self.handle.job_id]

    def observe(self, status: JobStatus, until: float | None = None) -> Step:
        """Read the log as far as ``status`` allows and decide.

        A pending job has no log yet. A running job's backlog is read for up to DRAIN_S (or until
        ``until``, a monotonic time), so a chatty job does not starve its status checks. A
        finished job's log is read to its end (bounded by FINAL_DRAIN_S), then its event is built.
        A failed read of a running job raises (the caller counts it with :meth:`failed`); a failed
        read after the end only shortens the log: the outcome is known.
        """
        step = Step()
        said = _describe(status)
        if said != self._said and not status.state.finished:
            step.notes.append(f"job {self.handle.job_id} is {said}")  # e.g. pending (Resources)
        self._said = said
        if status.state != JobState.PENDING:
            finished = status.state.finished
            started = time.monotonic()
            budget = FINAL_DRAIN_S if finished else DRAIN_S
            while True:
                try:
                    chunk = self.backend.read_logs(self.handle, self.cursor)
                except Exception:
                    if not finished:
                        raise
                    break
                for line in map(self.mask, chunk.lines):
                    step.lines.append(line)
                    self.tail.append(line)
                progressed, self.cursor = chunk.cursor != self.cursor, chunk.cursor
                step.wrote = step.wrote or progressed
                now = time.monotonic()
                if not progressed or now - started > budget or (not finished and until is not None and now > until):
                    break
        self.errors = 0
        if status.state == JobState.PENDING and self.pending_until is not None and time.time() >= self.pending_until:
            step.event = self.pending_event(said)
        if status.state.finished:
            if status.release:
                step.notes.append(self._release())
            step.event = self.final_event(status)
        return step

    def _release(self) -> str:
        """The job ended without giving back what it holds (a Kubernetes Job that never started, a Slurm
        secrets file): cancel it, as its owner."""
        try:
            self.backend.cancel(self.handle)
        except Exception as e:  # the outcome stands; the task's retry replaces the attempt anyway
            return f"job {self.handle.job_id} ended but could not be removed: {e}"
        return f"job {self.handle.job_id} has ended but still held something on its target: removed it"

    def failed(self, error: BaseException) -> JobEvent | None:
        """A poll or read failed: None while it may be passing, else the error event."""
        self.errors += 1
        if self.errors < MAX_CONSECUTIVE_ERRORS:
            return None
        event = self.error_event(
            f"lost contact with job {self.handle.job_id} after {self.errors} failed polls: {error}"
        )
        return replace(event, cause="host_lost") if isinstance(error, HostError) else event

    def final_event(self, status: JobStatus) -> JobEvent:
        return JobEvent(
            status="success" if status.state == JobState.SUCCEEDED else "failed",
            handle=self.handle.to_dict(),
            state=status.state.value,
            exit_code=status.exit_code,
            message=status.message,
            log_tail=list(self.tail),
            log_cursor=self.cursor,
            cause=status.cause,
        )

    def pending_event(self, said: str) -> JobEvent:
        """The job has waited ``max_pending`` without starting: its task decides where it goes."""
        return JobEvent("pending", self.handle.to_dict(), said, log_tail=list(self.tail), log_cursor=self.cursor)

    def error_event(self, message: str) -> JobEvent:
        return error_event(self.handle.to_dict(), message, list(self.tail), self.cursor)


def error_event(
    handle: dict[str, Any], message: str, log_tail: list[str] | None = None, cursor: LogCursor = 0
) -> JobEvent:
    """The event of a job that could not be followed to its end (its outcome is unknown)."""
    return JobEvent("error", handle, message, log_tail=list(log_tail or []), log_cursor=cursor)


def _describe(status: JobStatus) -> str:
    said = status.message or status.state.value
    return said if said.startswith(status.state.value) else f"{status.state.value} ({said})"
