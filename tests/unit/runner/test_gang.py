"""A node of a multi-node group in the job runner (runner/gang.py), with real processes: held after
submit (nothing runs, status pending), started by ``go`` with the group's contract, ended without
running by a cancel or when its group never starts."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from flexorch_provider.backends.local import runner_argv
from flexorch_provider.multinode import contract
from flexorch_provider.runner.procs import cancel
from flexorch_provider.runner.status import status


def runner(*args: str, stdin: dict | None = None, env: dict | None = None) -> dict:
    done = subprocess.run(
        [*runner_argv(), *args],
        input=json.dumps(stdin).encode() if stdin is not None else None,
        capture_output=True,
        timeout=30,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.decode().splitlines()[0])


def node_job(tmp_path: Path, hold_s: float = 60) -> dict:
    marker = tmp_path / "ran"
    script = (
        f'echo "rank=$FLEXORCH_NODE_RANK master=$MASTER_ADDR:$MASTER_PORT pet=$PET_NNODES" > {marker}; cat {marker}'
    )
    return {"job": {"run_key": "d/t/r/-1", "script": script, "env": {"A": "b"}, "gang": {"nodes": 2, "hold_s": hold_s}}}


def wait_state(run_dir: str, want: set[str], timeout: float = 20) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = status(run_dir)
        if st["state"] in want:
            return st
        time.sleep(0.05)
    raise AssertionError(f"{run_dir}: {status(run_dir)}")


def test_a_node_is_held_until_go_then_runs_with_the_groups_contract(tmp_path):
    env = dict(os.environ, SSH_CONNECTION="10.9.0.1 50000 10.9.0.11 22")
    out = runner("submit", str(tmp_path / "key"), stdin=node_job(tmp_path), env=env)
    assert out["gang"]["held"] and out["gang"]["addr"] == "10.9.0.11" and 0 < out["gang"]["port"] < 65536
    assert out["status"]["state"] == "pending" and "held" in out["status"]["message"]
    time.sleep(0.5)
    assert status(out["run_dir"])["state"] == "pending" and not (tmp_path / "ran").exists()  # nothing runs
    live = runner("live", str(tmp_path / "key"))  # a retry sees the held node and its facts
    assert live["run_dir"] == out["run_dir"] and live["gang"]["port"] == out["gang"]["port"] and live["gang"]["held"]

    group = contract(1, ["10.9.0.12", "10.9.0.11"], 0, 29600)
    answer = runner("go", out["run_dir"], stdin={"env": group})
    assert answer["state"] in ("running", "succeeded")
    runner("go", out["run_dir"], stdin={"env": contract(0, ["x", "y"], 0, 1)})  # a second go changes nothing
    st = wait_state(out["run_dir"], {"succeeded", "failed"})
    assert st["state"] == "succeeded", (Path(out["run_dir"]) / "log").read_text()
    assert (tmp_path / "ran").read_text() == "rank=1 master=10.9.0.12:29600 pet=2\n"
    assert "node 1 of 2: the group starts" in (Path(out["run_dir"]) / "log").read_text()
    assert "gang" not in runner("live", str(tmp_path / "key"))  # ended: nothing to reattach to


def test_a_held_node_that_is_cancelled_ends_without_running(tmp_path):
    out = runner("submit", str(tmp_path / "key"), stdin=node_job(tmp_path))
    assert status(out["run_dir"])["state"] == "pending"
    st = cancel(out["run_dir"], grace=2)
    assert st["state"] == "cancelled" and st["message"] == "cancelled before its group started"
    runner("go", out["run_dir"], stdin={"env": contract(0, ["a", "b"], 0, 1)})  # too late: it stays ended
    time.sleep(0.5)
    assert not (tmp_path / "ran").exists()


def test_a_node_whose_group_never_starts_gives_up_and_frees_its_gpus(tmp_path):
    home = dict(os.environ, HOME=str(tmp_path))  # its own GPU claims file
    job = node_job(tmp_path, hold_s=1)
    job["job"]["gpus"] = {"indices": [0]}
    out = runner("submit", str(tmp_path / "key"), stdin=job, env=home)
    other = subprocess.run([*runner_argv(), "submit", str(tmp_path / "other")], capture_output=True, timeout=30,
                           input=json.dumps({"job": {"run_key": "o", "script": "true", "gpus": {"indices": [0]}}}).encode(),
                           env=home)  # fmt: skip
    assert other.returncode == 4 and b"held by other flexorch runs" in other.stderr  # the held node has GPU 0
    st = wait_state(out["run_dir"], {"failed"}, timeout=15)
    assert "did not all start within 1s: nothing ran here" in st["message"]
    assert not (tmp_path / "ran").exists()
    again = runner("submit", str(tmp_path / "key"), stdin=node_job(tmp_path), env=home)  # the next try: a new attempt
    assert again["attempt"] == out["attempt"] + 1 and again["gang"]["held"]
    cancel(again["run_dir"], grace=2)
    freed = runner("submit", str(tmp_path / "other"), env=home,
                   stdin={"job": {"run_key": "o", "script": "true", "gpus": {"indices": [0]}}})  # fmt: skip
    assert wait_state(freed["run_dir"], {"succeeded"})["state"] == "succeeded"
