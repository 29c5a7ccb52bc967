"""A trigger cancelled while its task is still deferred only moved to another triggerer (Airflow
3.3 calls on_kill for that too): the job is left running. A task that left the deferred state (a
user marked it failed or success, or cleared it) has its job cancelled. Real local jobs."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.backends.local import LocalBackend
from flexorch_provider.spec import load_spec_text
from flexorch_provider.triggers import moved
from flexorch_provider.triggers.job import FlexJobTrigger


def _trigger(tmp_path, states, map_index=-1):
    backend = LocalBackend()
    spec = load_spec_text(f"name: t\nkind: batch\nrun: x\nlocal: {{run_dir: '{tmp_path}'}}\n")
    handle = backend.submit(ResolvedJob(run_key="d/t/r/-1", name="t", kind="batch", workload=spec, run="sleep 60"))
    trigger = FlexJobTrigger(handle=handle.to_dict())
    trigger.task_instance = SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=map_index)
    return backend, handle, trigger


@pytest.mark.parametrize(("state", "cancelled"), [("deferred", False), ("failed", True), ("success", True),
                                                  (None, True), (RuntimeError("API down"), True)])  # fmt: skip
def test_on_kill_cancels_the_job_only_when_the_task_left_the_deferred_state(tmp_path, monkeypatch, state, cancelled):
    asked = []

    def state_of(dag_id, run_id, task_id, map_index):
        asked.append((dag_id, run_id, task_id, map_index))
        if isinstance(state, Exception):
            raise state
        return state

    monkeypatch.setattr(moved, "_state_of", state_of)
    backend, handle, trigger = _trigger(tmp_path, state, map_index=3)
    try:
        asyncio.run(trigger.on_kill())
        assert asked == [("d", "r", "t", 3)]
        deadline = time.time() + 10
        status = backend.poll([handle])[handle.job_id]
        while cancelled and status.state == JobState.RUNNING and time.time() < deadline:
            time.sleep(0.1)
            status = backend.poll([handle])[handle.job_id]
        assert (status.state == JobState.RUNNING) is (not cancelled), status
    finally:
        backend.cancel(handle)


def test_the_state_is_read_for_the_mapped_task_instance(monkeypatch):
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    seen = {}

    def get_task_states(dag_id, task_ids, run_ids):
        seen.update(dag_id=dag_id, task_ids=task_ids, run_ids=run_ids)
        return {"r": {"run_2": "deferred", "run": "failed"}}

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    assert moved._state_of("d", "r", "run", 2) == "deferred"
    assert moved._state_of("d", "r", "run", -1) == "failed"
    assert seen == {"dag_id": "d", "task_ids": ["run"], "run_ids": ["r"]}
