"""A service's deploy, reconcile and undeploy through actions.converge, with real local replicas:
a reconcile starts nothing that nobody deployed or that was undeployed (its schedule keeps
ticking after an undeploy), and brings a deployed service's killed replica back."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.resolve import load_workload
from flexorch_provider.services import actions
from flexorch_provider.services.state import ServiceState

LOG = logging.getLogger("test-actions")


class FakeTI:
    dag_id, task_id, run_id, map_index = "web", "deploy", "r1", -1

    def __init__(self) -> None:
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def _job(tmp_path, action: str) -> ResolvedJob:
    w = load_workload({"name": "web-actions", "kind": "service", "target": "local", "replicas": 1,
                       "run": "exec sleep 300", "local": {"run_dir": str(tmp_path / "runs")}})  # fmt: skip
    return ResolvedJob.for_run(w, f"web/{action}/r1/-1", action=action)


def _pids(tmp_path) -> list[int]:
    out = []
    for pgid in (tmp_path / "runs").glob("_services/*/*/*/job.pgid"):
        if not (pgid.parent / "result.json").exists():
            out.append(int(pgid.read_text()))
    return out


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path / "state"))
    yield
    actions.converge(_job(tmp_path, "undeploy"), FakeTI(), LOG)


def test_reconcile_starts_nothing_nobody_deployed_and_restores_what_was(tmp_path, state):
    summary = actions.converge(_job(tmp_path, "reconcile"), FakeTI(), LOG)
    assert summary["deployed"] is False and _pids(tmp_path) == []  # nobody deployed it: left down
    assert ServiceState.load("web-actions").deployed is False

    actions.converge(_job(tmp_path, "deploy"), FakeTI(), LOG)
    (pid,) = _pids(tmp_path)
    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.5)
    actions.converge(_job(tmp_path, "reconcile"), FakeTI(), LOG)  # deployed: the replica comes back
    deadline = time.time() + 10
    while not _pids(tmp_path) and time.time() < deadline:
        time.sleep(0.1)
    assert _pids(tmp_path) and _pids(tmp_path) != [pid]

    actions.converge(_job(tmp_path, "undeploy"), FakeTI(), LOG)
    assert _pids(tmp_path) == []
    again = actions.converge(_job(tmp_path, "reconcile"), FakeTI(), LOG)  # the next tick after an undeploy
    assert again["deployed"] is False and _pids(tmp_path) == []
