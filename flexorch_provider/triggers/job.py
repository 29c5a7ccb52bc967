"""The one backend-agnostic trigger: follow a job until it ends, streaming its log.

All triggers in a triggerer process share one :class:`StatusBatcher`: the jobs of one
backend batch key (one Slurm cluster, one SSH host, the local machine) are polled with a
single ``backend.poll`` call per interval, however many tasks are deferred.

Like every trigger it never raises: problems become an event with ``status: error``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from flexorch_provider.backends.base import Backend, JobHandle, JobState, JobStatus, LogCursor
from flexorch_provider.exceptions import FlexorchError

MAX_CONSECUTIVE_ERRORS = 5
DRAIN_ROUNDS = 3
SECRET_REFS = "secret_refs"  # handle.data key: {name: SecretRef as dict}; references only, never values
MASK = "***"
MIN_MASK_LEN = 4


class Masker:
    """Replaces secret values in job output. The ssh and local runners mask at the source; Slurm
    and Kubernetes jobs write their output where we cannot, so lines are masked as we read them."""

    def __init__(self, values: list[str]) -> None:
        self.values = sorted({v for v in values if len(v) >= MIN_MASK_LEN}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for value in self.values:
            if value in line:
                line = line.replace(value, MASK)
        return line

    @classmethod
    def from_handle(cls, handle: JobHandle) -> Masker:
        """Resolve the handle's secret references (blocking: call it from a thread in a trigger)."""
        refs = handle.data.get(SECRET_REFS) or {}
        if not refs:
            return cls([])
        from airflow.sdk.log import mask_secret

        from flexorch_provider.resolve import resolve_secret
        from flexorch_provider.spec.fields import SecretRef

        values = []
        for name, ref in refs.items():
            value = resolve_secret(name, SecretRef.model_validate(ref))
            mask_secret(value, name)  # Airflow's own redaction of this process's logs, too
            values.append(value)
        return cls(values)


@dataclass
class _Group:
    backend: Backend
    interval: float
    members: dict[str, JobHandle] = field(default_factory=dict)
    waiters: dict[str, list[asyncio.Future[JobStatus]]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    polls: int = 0


class StatusBatcher:
    """One poll loop per batch key; every watcher gets each round's result for its job."""

    def __init__(self) -> None:
        self._groups: dict[tuple[int, str], _Group] = {}

    def polls(self, key: str) -> int:
        return sum(g.polls for (loop, k), g in self._groups.items() if k == key)

    @contextlib.asynccontextmanager
    async def watch(self, backend: Backend, handle: JobHandle, interval: float) -> AsyncIterator[_Watch]:
        gkey = (id(asyncio.get_running_loop()), backend.batch_key(handle))
        group = self._groups.get(gkey)
        if group is None:
            group = self._groups[gkey] = _Group(backend=backend, interval=interval)
        group.interval = min(group.interval, interval)
        group.members[handle.job_id] = handle
        if group.task is None or group.task.done():
            group.task = asyncio.get_running_loop().create_task(self._loop(gkey, group))
        try:
            yield _Watch(group, handle.job_id)
        finally:
            group.members.pop(handle.job_id, None)
            for fut in group.waiters.pop(handle.job_id, []):
                fut.cancel()

    async def _loop(self, gkey: tuple[int, str], group: _Group) -> None:
        try:
            while group.members:
                handles = list(group.members.values())
                error: BaseException | None = None
                result: dict[str, JobStatus] = {}
                try:
                    result = await asyncio.to_thread(group.backend.poll, handles)
                except Exception as e:  # delivered to every watcher; each decides
                    error = e
                group.polls += 1
                for job_id in [h.job_id for h in handles]:
                    for fut in group.waiters.pop(job_id, []):
                        if fut.done():
                            continue
                        if error is not None:
                            fut.set_exception(error)
                        elif job_id in result:
                            fut.set_result(result[job_id])
                        else:
                            fut.set_exception(FlexorchError(f"the backend returned no status for job {job_id}"))
                await asyncio.sleep(group.interval)
        finally:
            if self._groups.get(gkey) is group and not group.members:
                del self._groups[gkey]


@dataclass
class _Watch:
    group: _Group
    job_id: str

    async def next(self) -> JobStatus:
        fut: asyncio.Future[JobStatus] = asyncio.get_running_loop().create_future()
        self.group.waiters.setdefault(self.job_id, []).append(fut)
        return await fut


BATCHER = StatusBatcher()


def furthest(a: LogCursor, b: Any) -> LogCursor:
    """The cursor further into the log: byte offsets, or per-host offsets (``placement: all``)."""
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: max(int(a.get(k, 0)), int(b.get(k, 0))) for k in a.keys() | b.keys()}
    if not a and isinstance(b, dict):
        return {str(k): int(v) for k, v in b.items()}
    return a


class LogCheckpoint:
    """How far a trigger has streamed its job's log, on the triggerer's own disk.

    A trigger's kwargs are fixed when the task defers, so a trigger restarted by a new
    triggerer would stream the log again from there. Each trigger records its cursor here
    instead, one poll behind (lines logged an interval ago have surely reached the task
    log), and a trigger restarted on the same machine resumes from it: after a triggerer
    restart at most the last interval's lines appear twice, and none are lost. Files live
    under ``$FLEXORCH_STATE_DIR`` (default ``$AIRFLOW_HOME/flexorch``)``/log-cursors``; a
    trigger removes its own when it fires or its task is killed; a week-old one is pruned.
    """

    MAX_AGE_S = 7 * 24 * 3600
    _pruned: set[Path] = set()

    def __init__(self, handle: dict[str, Any]) -> None:
        key = json.dumps([handle.get("target"), handle.get("job_id"), handle.get("run_key")])
        self.path = self.root() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        self.saved: LogCursor | None = None

    @staticmethod
    def root() -> Path:
        base = os.environ.get("FLEXORCH_STATE_DIR")
        if not base:
            from airflow.configuration import AIRFLOW_HOME

            base = os.path.join(AIRFLOW_HOME, "flexorch")
        return Path(base) / "log-cursors"

    def load(self, start: LogCursor) -> LogCursor:
        """The further of ``start`` (from the task) and the recorded cursor."""
        try:
            value = json.loads(self.path.read_text())["cursor"]
            self.saved = value
            return furthest(start, value)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing or unreadable: start over
            self.saved = None
            return start

    def save(self, cursor: LogCursor) -> None:
        if cursor == self.saved:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._prune()
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"cursor": cursor}))
            os.replace(tmp, self.path)
            self.saved = cursor
        except OSError:
            pass  # a read-only or full disk costs duplicate lines after a restart, nothing else

    def drop(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _prune(self) -> None:
        root = self.path.parent
        if root in self._pruned:
            return
        self._pruned.add(root)
        cutoff = time.time() - self.MAX_AGE_S
        for old in root.iterdir():
            with contextlib.suppress(OSError):
                if old.stat().st_mtime < cutoff:
                    old.unlink()


class FlexJobTrigger(BaseTrigger):
    """Follows one job on any backend; fires once with the outcome.

    :param handle: ``JobHandle.to_dict()`` of the submitted job.
    :param poll_interval: seconds between status polls (shared per batch key).
    :param log_cursor: where in the job's log to start streaming.
    :param tail_lines: how many last log lines a failure event carries.
    :param not_before: epoch seconds before which the final event is held back (see ``_hold``).
    """

    def __init__(
        self,
        handle: dict[str, Any],
        poll_interval: float = 5.0,
        log_cursor: LogCursor = 0,
        tail_lines: int = 30,
        not_before: float | None = None,
    ) -> None:
        super().__init__()
        self.handle = handle
        self.poll_interval = float(poll_interval)
        self.log_cursor = log_cursor
        self.tail_lines = int(tail_lines)
        self.not_before = not_before
        self._mask = Masker([])

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "handle": self.handle,
                "poll_interval": self.poll_interval,
                "log_cursor": self.log_cursor,
                "tail_lines": self.tail_lines,
                "not_before": self.not_before,
            },
        )

    async def _hold(self) -> None:
        """Fire no sooner than ``not_before`` (epoch seconds). Airflow 3.3.2's scheduler fails a
        task whose trigger fires before it has processed the executor's report of the defer
        itself (apache/airflow#67287, fixed upstream after 3.3.2); under load that report was
        seen arriving 6 s late. The operator sets this to 10 s after it defers."""
        if self.not_before is not None:
            delay = self.not_before - time.time()
            if delay > 0:
                await asyncio.sleep(delay)

    def _backend(self) -> Backend:
        from flexorch_provider.backends.registry import get_backend

        return get_backend(self.handle["target"])

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            handle = JobHandle.from_dict(self.handle)
            backend = self._backend()
        except Exception as e:
            await self._hold()
            yield TriggerEvent({"status": "error", "handle": self.handle, "message": f"cannot follow the job: {e}"})
            return
        tail: collections.deque[str] = collections.deque(maxlen=self.tail_lines)
        cursor = self.log_cursor
        errors = 0
        try:
            self._mask = await asyncio.to_thread(Masker.from_handle, handle)
        except Exception as e:  # without the values nothing could be masked: do not stream unmasked output
            await self._hold()
            yield TriggerEvent({"status": "error", "handle": self.handle,
                                "message": f"cannot read the job's secrets to mask its output: {e}"})  # fmt: skip
            return
        checkpoint = LogCheckpoint(self.handle)
        cursor = checkpoint.load(cursor)
        if cursor != self.log_cursor:
            self.log.info("resuming job %s's log where this task's previous trigger left it", handle.job_id)
        last_said = ""
        async with BATCHER.watch(backend, handle, self.poll_interval) as watch:
            while True:
                try:
                    status = await watch.next()
                    said = status.message or status.state.value
                    if not said.startswith(status.state.value):
                        said = f"{status.state.value} ({said})"
                    if said != last_said and not status.state.finished:
                        self.log.info("job %s is %s", handle.job_id, said)  # e.g. pending: Resources
                        last_said = said
                    if status.state != JobState.PENDING:  # a job that has not started has no log yet
                        checkpoint.save(cursor)  # lines before it went to the log an interval ago
                        cursor = await self._stream(backend, handle, cursor, tail)
                    errors = 0
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    errors += 1
                    if errors >= MAX_CONSECUTIVE_ERRORS:
                        await self._hold()
                        checkpoint.drop()  # after the hold: a restart during it resumes, not replays
                        yield TriggerEvent(
                            {
                                "status": "error",
                                "handle": self.handle,
                                "message": f"lost contact with job {handle.job_id} after {errors} failed polls: {e}",
                                "log_tail": list(tail),
                            }
                        )
                        return
                    self.log.warning(
                        "polling job %s failed (%d/%d): %s", handle.job_id, errors, MAX_CONSECUTIVE_ERRORS, e
                    )
                    continue
                if status.state.finished:
                    for _ in range(DRAIN_ROUNDS):  # whatever was written after the last poll
                        before = cursor
                        with contextlib.suppress(Exception):
                            cursor = await self._stream(backend, handle, cursor, tail)
                        if cursor == before:
                            break
                    await self._hold()
                    checkpoint.drop()
                    yield TriggerEvent(
                        {
                            "status": "success" if status.state == JobState.SUCCEEDED else "failed",
                            "handle": self.handle,
                            "state": status.state.value,
                            "exit_code": status.exit_code,
                            "message": status.message,
                            "log_tail": list(tail),
                            "log_cursor": cursor,
                        }
                    )
                    return

    async def _stream(
        self, backend: Backend, handle: JobHandle, cursor: LogCursor, tail: collections.deque[str]
    ) -> LogCursor:
        chunk = await asyncio.to_thread(backend.read_logs, handle, cursor)
        for line in map(self._mask, chunk.lines):
            self.log.info("%s", line)
            tail.append(line)
        return chunk.cursor

    async def on_kill(self) -> None:
        """The user marked the task failed/success or cleared it: stop the job."""
        try:
            handle = JobHandle.from_dict(self.handle)
            self.log.info("task killed: cancelling job %s on %s", handle.job_id, handle.target)
            await asyncio.to_thread(self._backend().cancel, handle)
            LogCheckpoint(self.handle).drop()
        except Exception:
            self.log.exception("could not cancel job %s", self.handle.get("job_id"))
