"""The one backend-agnostic trigger: follow a job until it ends, streaming its log.

Each interval it takes the job's status from the shared :class:`~.batcher.StatusBatcher`
(one ``backend.poll`` per batch key for every deferred task) and hands it to the same
:class:`~flexorch_provider.follower.Follower` the worker follows with before it defers, so
a job's events are built the same way wherever its end is seen.

Like every trigger it never raises: problems become an event with ``status: error``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from flexorch_provider.backends.base import Backend, JobHandle, LogCursor
from flexorch_provider.follower import Follower, error_event
from flexorch_provider.masking import masker_for
from flexorch_provider.records import JobEvent
from flexorch_provider.triggers.batcher import BATCHER
from flexorch_provider.triggers.checkpoint import LogCheckpoint


class FlexJobTrigger(BaseTrigger):
    """Follows one job on any backend; fires once with the outcome.

    :param handle: ``JobHandle.to_dict()`` of the submitted job.
    :param poll_interval: seconds between status polls (shared per batch key).
    :param log_cursor: where in the job's log to start streaming.
    :param tail_lines: how many last log lines a failure event carries.
    :param not_before: epoch seconds before which the final event is held back (see ``_hold``).
    :param pending_until: epoch seconds; a job still pending then fires a ``pending`` event
        (``max_pending``: the task moves it to another target).
    :param carry: what the task wants back with the event (its target choice so far).
    """

    def __init__(
        self,
        handle: dict[str, Any],
        poll_interval: float = 5.0,
        log_cursor: LogCursor = 0,
        tail_lines: int = 30,
        not_before: float | None = None,
        pending_until: float | None = None,
        carry: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.pending_until = pending_until
        self.carry = carry
        self.handle = handle
        self.poll_interval = float(poll_interval)
        self.log_cursor = log_cursor
        self.tail_lines = int(tail_lines)
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "handle": self.handle,
                "poll_interval": self.poll_interval,
                "log_cursor": self.log_cursor,
                "tail_lines": self.tail_lines,
                "not_before": self.not_before,
                "pending_until": self.pending_until,
                "carry": self.carry,
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

    async def _fire(self, event: JobEvent, checkpoint: LogCheckpoint | None = None) -> TriggerEvent:
        await self._hold()
        if checkpoint is not None:
            await asyncio.to_thread(checkpoint.drop)  # after the hold: a restart during it resumes, not replays
        if self.carry is not None:
            event = replace(event, carry=self.carry)
        return TriggerEvent(event.to_dict())

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            handle = JobHandle.from_dict(self.handle)
            backend = self._backend()
        except Exception as e:
            yield await self._fire(error_event(self.handle, f"cannot follow the job: {e}"))
            return
        try:
            mask = await asyncio.to_thread(masker_for, handle.secret_refs)
        except Exception as e:  # without the values nothing could be masked: do not stream unmasked output
            yield await self._fire(error_event(self.handle, f"cannot read the job's secrets to mask its output: {e}"))
            return
        checkpoint = LogCheckpoint(self.handle)
        cursor = await asyncio.to_thread(checkpoint.load, self.log_cursor, backend.furthest)  # the store may be remote
        if cursor != self.log_cursor:
            self.log.info("resuming job %s's log where this task's previous trigger left it", handle.job_id)
        follower = Follower(
            backend, handle, cursor=cursor, tail_lines=self.tail_lines, mask=mask, pending_until=self.pending_until
        )
        async with BATCHER.watch(backend, handle, self.poll_interval) as watch:
            while True:
                try:
                    status = await watch.next()
                    # lines read before this wait reached the task log by now
                    if not await asyncio.to_thread(checkpoint.save, follower.cursor):
                        break  # another copy follows the job now
                    step = await asyncio.to_thread(follower.observe, status)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    event = follower.failed(e)
                    if event is not None:
                        yield await self._fire(event, checkpoint)
                        return
                    self.log.warning("following job %s failed (%d in a row): %s", handle.job_id, follower.errors, e)
                    continue
                step.log_to(self.log)
                if step.event is not None:
                    yield await self._fire(step.event, checkpoint)
                    return
        # This triggerer stalled past Airflow's health threshold: the trigger runs on another one
        # (which claimed the log cursor) and Airflow is about to cancel this copy. Streaming on
        # would log the new copy's lines twice; firing would race it. Wait for the cancel.
        self.log.info(
            "job %s is followed by this trigger's copy on another triggerer (this one stalled): this copy stops "
            "streaming and waits for Airflow to cancel it",
            handle.job_id,
        )
        await asyncio.Event().wait()

    async def on_kill(self) -> None:
        """The user marked the task failed/success or cleared it: stop the job. (Not when the task is
        still deferred: the trigger only moved to another triggerer, which follows the job.)"""
        from flexorch_provider.triggers.moved import task_still_deferred

        if await task_still_deferred(self):
            return
        try:
            handle = JobHandle.from_dict(self.handle)
            self.log.info("task killed: cancelling job %s on %s", handle.job_id, handle.target)
            await asyncio.to_thread(self._backend().cancel, handle)
            await asyncio.to_thread(LogCheckpoint(self.handle).drop)
        except Exception:
            self.log.exception("could not cancel job %s", self.handle.get("job_id"))
