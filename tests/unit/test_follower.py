"""The one follow engine: the worker's follow and the trigger build the same events from the
same job (stand-in backends: the engine's own logic under test)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from flexorch_provider.backends.base import Backend, JobHandle, JobState, JobStatus, LogChunk
from flexorch_provider.follower import MAX_CONSECUTIVE_ERRORS, Follower
from flexorch_provider.operators.flex import FlexOperator
from flexorch_provider.triggers.job import FlexJobTrigger


class Scripted(Backend):
    """A job that runs for ``rounds`` polls writing two lines per poll, then ends as ``final``;
    ``broken`` polls in a row fail first."""

    name = "scripted"

    def __init__(self, final: JobStatus, rounds: int = 3, broken: int = 0) -> None:
        self.final, self.rounds, self.broken, self.polls = final, rounds, broken, 0

    def render(self, job):  # pragma: no cover - not used
        return ""

    def submit(self, job):  # pragma: no cover - not used
        raise NotImplementedError

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        self.polls += 1
        if self.broken:
            self.broken -= 1
            raise OSError("connection reset")
        status = self.final if self.polls > self.rounds else JobStatus(JobState.RUNNING, message="running")
        return {h.job_id: status for h in handles}

    def read_logs(self, handle, cursor):
        written = 2 * min(self.polls, self.rounds + 1)
        return LogChunk([f"line {i} token-abcd" for i in range(cursor, written)], max(cursor, written))

    def cancel(self, handle):  # pragma: no cover - not used
        pass


HANDLE = JobHandle("scripted", "j/1", "d/t/r/-1", {"anything": 1})


def _worker_event(backend: Backend, monkeypatch) -> dict:
    monkeypatch.setattr("flexorch_provider.operators.flex.get_backend", lambda target: backend)
    monkeypatch.setattr("flexorch_provider.operators.flex.masker_for", lambda refs: _masker())
    op = FlexOperator(task_id="t", spec={"name": "x", "kind": "batch", "run": "true"}, poll_interval=0.01)
    event, _ = op._follow(HANDLE)
    assert event is not None
    return event.to_dict()


def _trigger_event(backend: Backend, monkeypatch) -> dict:
    monkeypatch.setattr("flexorch_provider.triggers.job.masker_for", lambda refs: _masker())
    monkeypatch.setenv("FLEXORCH_STATE_DIR", "/nonexistent/flexorch-state")  # checkpoints are best effort
    trigger = FlexJobTrigger(HANDLE.to_dict(), poll_interval=0.01)
    monkeypatch.setattr(trigger, "_backend", lambda: backend)

    async def run():
        return [e async for e in trigger.run()]

    (event,) = asyncio.run(run())
    return event.payload


def _masker():
    from flexorch_provider.masking import Masker

    return Masker(["token-abcd"])


@pytest.mark.parametrize(
    ("final", "broken"),
    [
        (JobStatus(JobState.SUCCEEDED, 0, "exit code 0"), 0),
        (JobStatus(JobState.FAILED, 3, "exit code 3"), 0),
        (JobStatus(JobState.TIMEOUT, 124, "timed out after 5s"), 2),  # two failed polls on the way
        (JobStatus(JobState.RUNNING), MAX_CONSECUTIVE_ERRORS),  # never reachable: the error event
    ],
)
def test_worker_and_trigger_build_identical_events(final, broken, monkeypatch):
    worker = _worker_event(Scripted(final, broken=broken), monkeypatch)
    trigger = _trigger_event(Scripted(final, broken=broken), monkeypatch)
    assert worker == trigger
    if broken < MAX_CONSECUTIVE_ERRORS:
        assert worker["state"] == final.state.value and worker["exit_code"] == final.exit_code
        assert worker["log_tail"] == [f"line {i} ***" for i in range(8)]  # every line once, masked, in order
        assert worker["log_cursor"] == 8
    else:
        assert worker["status"] == "error" and "connection reset" in worker["message"]


def test_a_pending_job_is_not_asked_for_its_log_and_its_reason_is_said_once():
    class Pending(Scripted):
        def read_logs(self, handle, cursor):
            raise AssertionError("a pending job has no log")

    follower = Follower(Pending(JobStatus(JobState.SUCCEEDED)), HANDLE)
    waiting = JobStatus(JobState.PENDING, message="pending: Resources")
    assert follower.observe(waiting).notes == ["job j/1 is pending: Resources"]
    assert follower.observe(waiting).notes == []  # said once, not every interval


def test_a_failed_read_after_the_end_still_reports_the_outcome():
    class LogGone(Scripted):
        def read_logs(self, handle, cursor):
            raise OSError("log file removed")

    step = Follower(LogGone(JobStatus(JobState.SUCCEEDED)), HANDLE).observe(JobStatus(JobState.SUCCEEDED, 0))
    assert step.event is not None and step.event.status == "success"
    with pytest.raises(OSError):  # while it runs, a failed read counts as a failure to follow
        Follower(LogGone(JobStatus(JobState.SUCCEEDED)), HANDLE).observe(JobStatus(JobState.RUNNING))


def test_a_job_that_ended_holding_its_resources_is_cancelled_by_its_follower():
    """poll never changes a job; the follower, as the job's owner, releases one that ended
    without giving back what it holds (a Kubernetes Job whose image can never be pulled)."""
    cancelled = []

    class Stuck(Scripted):
        def cancel(self, handle):
            cancelled.append(handle.job_id)

    stuck = JobStatus(JobState.FAILED, message="ErrImagePull", release=True)
    step = Follower(Stuck(stuck), HANDLE).observe(stuck)
    assert cancelled == ["j/1"] and step.event is not None and step.event.status == "failed"
    assert any("removed it" in note for note in step.notes)
    assert Follower(Stuck(stuck), HANDLE).observe(JobStatus(JobState.FAILED, 1)).event and cancelled == ["j/1"]


def test_the_status_a_submit_answered_with_is_the_first_look_then_the_backend_is_asked():
    from dataclasses import replace

    backend = Scripted(JobStatus(JobState.SUCCEEDED), rounds=5)
    seen = JobStatus(JobState.RUNNING, message="running on h1")
    follower = Follower(backend, replace(HANDLE, first_status=seen))
    assert follower.poll() == seen and backend.polls == 0  # no second round trip right after the submit
    assert follower.poll().message == "running" and backend.polls == 1
    # never stored: a trigger or a restarted worker asks the backend
    assert "first_status" not in replace(HANDLE, first_status=seen).to_dict()
    assert JobHandle.from_dict(replace(HANDLE, first_status=seen).to_dict()) == HANDLE
