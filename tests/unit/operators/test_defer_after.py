"""FlexOperator follows a job from the worker for ``defer_after`` seconds before deferring
(real local jobs; the context is a stand-in for the task runner's)."""

from __future__ import annotations

import time
import types

import pytest
from airflow.exceptions import TaskDeferred

from flexorch_provider.operators.flex import FlexOperator


def context(task_id="t"):
    """Each task id is its own run key (one run key is one job: a second execute reattaches)."""
    pushed: dict[str, object] = {}
    ti = types.SimpleNamespace(dag_id="d", task_id=task_id, run_id="r", map_index=-1,
                               xcom_push=lambda key, value: pushed.__setitem__(key, value))  # fmt: skip
    return {"ti": ti}, pushed


def op(tmp_path, run, **kw):
    spec = {"name": "quick", "kind": "batch", "target": "local", "run": run, "local": {"run_dir": str(tmp_path)}}
    return FlexOperator(task_id="t", spec=spec, poll_interval=0.2, **kw)


def test_a_job_that_ends_within_defer_after_finishes_in_the_worker(tmp_path):
    ctx, pushed = context()
    result = op(tmp_path, "echo quick", defer_after=10).execute(ctx)
    assert result["state"] == "succeeded" and result["exit_code"] == 0 and pushed["job"]["job_id"]


def test_a_longer_job_defers_with_the_log_cursor_it_reached(tmp_path):
    ctx, _ = context()
    with pytest.raises(TaskDeferred) as deferred:
        op(tmp_path, "echo early; sleep 30", defer_after=1.5).execute(ctx)
    trigger = deferred.value.trigger
    # the trigger starts after "early\n" (streamed by the worker), so the task log shows it once
    assert trigger.log_cursor == len(b"early\n")
    assert deferred.value.method_name == "execute_complete"
    assert trigger.not_before >= time.time() + 5  # it resumes no sooner than 10 s after deferring
    from flexorch_provider.backends.base import JobHandle
    from flexorch_provider.backends.registry import get_backend

    get_backend("local").cancel(JobHandle.from_dict(trigger.handle))


def test_defer_after_zero_defers_at_once_and_a_quick_failure_fails_in_the_worker(tmp_path):
    ctx, _ = context()
    with pytest.raises(TaskDeferred) as deferred:
        op(tmp_path, "sleep 0.5", defer_after=0).execute(ctx)
    assert deferred.value.trigger.log_cursor == 0
    from flexorch_provider.exceptions import JobFailedError

    with pytest.raises(JobFailedError) as failed:
        op(tmp_path, "echo broken; exit 4", defer_after=10).execute(context("broken")[0])
    assert failed.value.exit_code == 4 and "broken" in failed.value.log_tail


class EndlessLog:
    """A backend stand-in (our own logic under test): the job runs forever and always has one more
    log line, or its status cannot be read at all."""

    def __init__(self, broken=False):
        self.broken = broken
        self.polls = 0

    def poll(self, handles):
        self.polls += 1
        if self.broken:
            raise OSError("connection reset")
        from flexorch_provider.backends.base import JobState, JobStatus

        return {h.job_id: JobStatus(JobState.RUNNING) for h in handles}

    def read_logs(self, handle, cursor):
        from flexorch_provider.backends.base import LogChunk

        return LogChunk([f"line {cursor}"], cursor + 1)


def _handle():
    from flexorch_provider.backends.base import JobHandle

    return JobHandle("local", "j/1", "d/t/r/-1", {"run_dir": "/nonexistent"})


def test_a_chatty_job_still_defers_when_defer_after_is_up(tmp_path, monkeypatch):
    backend = EndlessLog()
    monkeypatch.setattr("flexorch_provider.operators.flex.get_backend", lambda target: backend)
    event, cursor = op(tmp_path, "true")._follow(_handle(), until=time.monotonic() + 0.3)
    assert event is None and cursor > 0  # it stopped reading to defer, and the trigger goes on from here


def test_a_backend_failure_before_deferring_defers_instead_of_failing_the_task(tmp_path, monkeypatch):
    backend = EndlessLog(broken=True)
    monkeypatch.setattr("flexorch_provider.operators.flex.get_backend", lambda target: backend)
    assert op(tmp_path, "true")._follow(_handle(), until=time.monotonic() + 5) == (None, 0)
    assert backend.polls == 1
    # not deferrable: the worker is as patient as the trigger, then gives up with the error event
    event, _ = op(tmp_path, "true")._follow(_handle())
    assert event is not None and event.status == "error" and "after 5 failed polls: connection reset" in event.message
    assert backend.polls == 1 + 5


class EndsWhileItsLogIsRead(EndlessLog):
    """The job is running at the first poll and has ended by the next (its last lines were read
    in between): the worker reports the end itself rather than deferring to a trigger."""

    def poll(self, handles):
        from flexorch_provider.backends.base import JobState, JobStatus

        self.polls += 1
        state = JobState.RUNNING if self.polls == 1 else JobState.SUCCEEDED
        return {h.job_id: JobStatus(state, exit_code=0 if state.finished else None) for h in handles}

    def read_logs(self, handle, cursor):
        from flexorch_provider.backends.base import LogChunk

        return LogChunk(["done"] if cursor == 0 else [], 1)


def test_a_job_that_ends_as_defer_after_runs_out_is_finished_in_the_worker(tmp_path, monkeypatch):
    backend = EndsWhileItsLogIsRead()
    monkeypatch.setattr("flexorch_provider.operators.flex.get_backend", lambda target: backend)
    event, cursor = op(tmp_path, "true")._follow(_handle(), until=time.monotonic())
    assert event is not None and event.status == "success" and event.log_tail == ["done"]
    assert cursor == 1 and backend.polls == 2


class QuietRunning(EndlessLog):
    def read_logs(self, handle, cursor):
        from flexorch_provider.backends.base import LogChunk

        return LogChunk([], cursor)


def test_a_quiet_running_job_defers_without_a_second_look(tmp_path, monkeypatch):
    backend = QuietRunning()
    monkeypatch.setattr("flexorch_provider.operators.flex.get_backend", lambda target: backend)
    assert op(tmp_path, "true")._follow(_handle(), until=time.monotonic()) == (None, 0)
    assert backend.polls == 1


def test_a_success_the_dead_worker_never_recorded_is_adopted_a_recorded_one_reruns(tmp_path, capsys):
    """The job succeeded but its try never recorded it (the worker died): the next try takes its
    result instead of running it again. A recorded success (then a cleared task) runs anew."""
    from flexorch_provider.backends.base import ResolvedJob
    from flexorch_provider.backends.registry import get_backend

    starts = tmp_path / "starts"
    task = op(tmp_path, f"echo start >> {starts}; echo output", defer_after=10)
    ctx, _ = context("adopt")
    orphan = get_backend("local").submit(ResolvedJob.for_run(task.workload, "d/adopt/r/-1"))  # a try that died
    for _ in range(100):
        if get_backend("local").poll([orphan])[orphan.job_id].state.finished:
            break
        time.sleep(0.1)
    capsys.readouterr()
    result = task.execute(ctx)
    assert result["state"] == "succeeded" and result["job_id"] == orphan.job_id
    assert starts.read_text() == "start\n"
    task_log = capsys.readouterr().out  # the operator's log records
    assert "had already succeeded, but no earlier try recorded it" in task_log
    assert "] output " in task_log or "output\n" in task_log  # its log reached this try's log
    op(tmp_path, f"echo start >> {starts}", defer_after=10).execute(ctx)  # recorded above: this runs again
    assert starts.read_text() == "start\nstart\n"
