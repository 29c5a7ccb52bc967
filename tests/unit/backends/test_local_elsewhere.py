"""A local job and the worker it runs on: a retry that Airflow runs on another worker cannot see or
stop it, so it refuses to start a second copy (real jobs; the other worker is this machine under
another hostname), until the job is seen to end or its timeout has passed."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from flexorch_provider.backends import local
from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.backends.local import LocalBackend
from flexorch_provider.exceptions import BackendError
from flexorch_provider.spec import load_spec_text


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path / "state"))
    name = {"host": socket.gethostname()}
    monkeypatch.setattr(local.socket, "gethostname", lambda: name["host"])
    return name


def _job(tmp_path, run: str, timeout: str = "10m") -> ResolvedJob:
    spec = load_spec_text(f"name: t\nkind: batch\nrun: x\ntimeout: {timeout}\nlocal: {{run_dir: '{tmp_path}/runs'}}\n")
    return ResolvedJob(run_key="d/t/r/-1", name="t", kind="batch", workload=spec, run=run)


def _wait_final(backend, handle):
    deadline = time.time() + 20
    while time.time() < deadline:
        state = backend.poll([handle])[handle.job_id].state
        if state.finished:
            return state
        time.sleep(0.1)
    raise AssertionError("the job did not end")


def test_a_retry_on_another_worker_refuses_while_the_job_may_run_there(tmp_path, here):
    backend = LocalBackend()
    here["host"] = "worker-b"
    gate = tmp_path / "go"
    first = backend.submit(_job(tmp_path, f"while [ ! -e {gate} ]; do sleep 0.1; done"))
    here["host"] = "worker-c"  # Airflow ran the retry on another worker
    with pytest.raises(BackendError, match=r"started on the worker worker-b and may still run there; this try runs "
                                           r"on worker-c, .* does not start a second copy"):  # fmt: skip
        backend.submit(_job(tmp_path, "echo second copy"))
    here["host"] = "worker-b"  # its own worker sees it end, and says so
    gate.touch()
    assert _wait_final(backend, first) == JobState.SUCCEEDED
    here["host"] = "worker-c"
    again = backend.submit(_job(tmp_path, "echo now it may"))
    assert _wait_final(backend, again) == JobState.SUCCEEDED


def test_a_job_past_its_timeout_is_not_waited_for(tmp_path, here):
    from flexorch_provider.store import get_store

    backend = LocalBackend()
    here["host"] = "worker-b"
    job = _job(tmp_path, "sleep 30", timeout="1s")
    first = backend.submit(job)
    try:
        record = get_store().get(local.STARTED, job.key_slug)
        assert record["host"] == "worker-b" and record["until"] <= time.time() + 1 + local.GRACE_S
        get_store().put(local.STARTED, job.key_slug, {**record, "until": time.time() - 1})  # its timeout has passed
        here["host"] = "worker-c"
        assert backend.submit(job).job_id  # not refused
    finally:
        backend.cancel(first)


def test_asked_from_another_machine_a_running_local_job_says_where_it_runs(tmp_path, here):
    """The flexorch page on the api-server polls a local job it cannot see: "runs on the worker X"
    while it has not been seen to end, not "lost"."""
    backend = LocalBackend()
    here["host"] = "worker-b"
    gate = tmp_path / "go"
    handle = backend.submit(_job(tmp_path, f"while [ ! -e {gate} ]; do sleep 0.1; done"))
    # as the api-server sees it: the attempt's folder is on the worker's disk, not here
    unseen = str(Path(handle.data["run_dir"]).parent / "on-the-worker-only")
    moved = handle.__class__(**{**handle.__dict__, "data": {**handle.data, "run_dir": unseen}})
    try:
        here["host"] = "api-server"
        seen = backend.poll([moved])[moved.job_id]
        assert seen.state == JobState.RUNNING and "runs on the worker worker-b" in seen.message
        here["host"] = "worker-b"
        gate.touch()
        assert _wait_final(backend, handle) == JobState.SUCCEEDED  # its worker saw it end
        here["host"] = "api-server"
        assert backend.poll([moved])[moved.job_id].state == JobState.LOST
    finally:
        backend.cancel(handle)
