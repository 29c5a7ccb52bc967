"""Services on the local target: the converge of backends/services/ with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.local import LocalBackend
from flexorch_provider.backends.services import desired_state
from flexorch_provider.exceptions import ServiceError
from flexorch_provider.resolve import load_workload

BACKEND = LocalBackend()


def job(tmp_path, action="deploy", *, run="touch ok; exec sleep 300", secrets=None, **fields):
    spec = {"name": "svc", "kind": "service", "target": "local", "run": run, "replicas": 3,
            "health": {"command": "test -f ok", "interval": "1s", "grace": "5s"},
            "local": {"run_dir": str(tmp_path)}, **fields}  # fmt: skip
    w = load_workload(spec)
    return ResolvedJob(run_key="svc/deploy/r/-1", name="svc", kind="service", workload=w, run=w.run,
                       env=dict(w.env), secrets=secrets or {}, action=action)  # fmt: skip


def replica_pids(tmp_path):
    """pid of each live replica's job process group, by slot."""
    out = {}
    for pgid_file in tmp_path.glob("_services/*/*-*/*/job.pgid"):
        pgid = int(pgid_file.read_text())
        if not (pgid_file.parent / "result.json").exists():
            out[int(pgid_file.parent.parent.name.split("-")[0])] = pgid
    return out


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


@pytest.fixture
def undeploy(tmp_path):
    yield
    BACKEND.service(job(tmp_path, "undeploy"), lambda _: None)
    assert replica_pids(tmp_path) == {}


def test_replicas_without_a_port_share_the_host_and_a_killed_one_is_restarted(tmp_path, undeploy):
    log: list[str] = []
    summary = BACKEND.service(job(tmp_path), log.append)
    assert [r["slot"] for r in summary["replicas"]] == [0, 1, 2]
    assert {r["host"] for r in summary["replicas"]} == {socket.gethostname()}
    pids = replica_pids(tmp_path)
    assert sorted(pids) == [0, 1, 2] and all(alive(p) for p in pids.values())

    os.killpg(pids[1], signal.SIGKILL)
    time.sleep(0.5)
    again = BACKEND.service(job(tmp_path, "reconcile"), log.append)
    assert len(again["changes"]) == 2  # the dead one retired, a new attempt started
    now = replica_pids(tmp_path)
    assert now[0] == pids[0] and now[2] == pids[2] and now[1] != pids[1] and alive(now[1])
    # the dead replica's log is kept for troubleshooting
    assert list(tmp_path.glob("_services/*/.retired/1-*/1/log"))


def test_a_replica_that_stays_unhealthy_past_its_grace_is_restarted(tmp_path, undeploy):
    BACKEND.service(job(tmp_path, health={"command": "test -f ok", "interval": "1s", "grace": "1s"}), print)
    before = replica_pids(tmp_path)
    (next(tmp_path.glob("_services/*/0-*/1")) / "ok").unlink()  # replica 0 turns unhealthy
    time.sleep(1.2)
    log: list[str] = []
    BACKEND.service(job(tmp_path, "reconcile", health={"command": "test -f ok", "interval": "1s", "grace": "1s"}),
                    log.append)  # fmt: skip
    assert any("replica 0" in line and "unhealthy: health command exited 1" in line for line in log)
    after = replica_pids(tmp_path)
    assert after[0] != before[0] and after[1] == before[1] and after[2] == before[2]


def test_recreate_replaces_everything_and_a_secret_rotation_is_a_new_revision(tmp_path, undeploy):
    first = BACKEND.service(job(tmp_path, secrets={"TOKEN": "old-secret-1"}), print)
    second = BACKEND.service(job(tmp_path, secrets={"TOKEN": "new-secret-2"}, update={"strategy": "recreate"}), print)
    assert second["revision"] != first["revision"]
    assert all(second["revision"] in r["run_dir"] for r in second["replicas"])
    written = "".join(p.read_text() for p in tmp_path.glob("_services/**/job.json"))
    assert "secret-" not in written and "secret-" not in json.dumps(second)


def test_a_replica_that_exits_fails_the_deploy_with_its_log(tmp_path, undeploy):
    with pytest.raises(ServiceError) as err:
        BACKEND.service(job(tmp_path, run="echo port 9 is taken >&2; exit 4", replicas=1), print)
    assert "exited (failed, exit 4)" in str(err.value) and "port 9 is taken" in str(err.value)


def test_the_revision_ignores_the_run_key_and_follows_what_runs(tmp_path):
    a = desired_state(job(tmp_path), "/s")
    b = desired_state(job(tmp_path), "/s")
    b_key = desired_state(ResolvedJob(**{**job(tmp_path).__dict__, "run_key": "svc/reconcile/other/-1"}), "/s")
    changed = desired_state(job(tmp_path, env={"MODE": "fast"}), "/s")
    assert a.revision == b.revision == b_key.revision != changed.revision
    assert a.documents[2]["env"]["FLEXORCH_REPLICA"] == "2" and a.documents[0]["timeout"] is None
