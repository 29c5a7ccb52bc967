"""How the ssh target reads a multi-node group's nodes as one job (backends/ssh.py)."""

from __future__ import annotations

from flexorch_provider.backends.ssh import _group_status
from flexorch_provider.backends.sshpool import Host
from flexorch_provider.records import JobState

A, B, C = Host.parse("u@10.0.0.1"), Host.parse("u@10.0.0.2"), Host.parse("u@10.0.0.3")


def run(state: str, **more) -> dict:
    return {"state": state, **more}


def test_the_first_node_to_fail_ends_the_group_and_the_others_are_released():
    status = _group_status([(A, run("running")), (B, run("failed", exit_code=3, message="exit code 3", finished_at=5.0)),
                            (C, run("running"))])  # fmt: skip
    assert status.state == JobState.FAILED and status.exit_code == 3 and status.release
    assert (
        status.message
        == "rank 1 on u@10.0.0.2 ended failed (exit 3): exit code 3; the other 2 running node(s) are stopped"
    )


def test_the_node_that_ended_first_is_named_not_the_one_that_broke_after_it():
    status = _group_status([(A, run("failed", exit_code=1, message="connection reset", finished_at=9.0)),
                            (B, run("failed", exit_code=3, message="exit code 3", finished_at=5.0))])  # fmt: skip
    assert status.state == JobState.FAILED and status.exit_code == 3 and not status.release
    assert (
        status.message.startswith("rank 1 on u@10.0.0.2 ended failed (exit 3)")
        and "then rank 0 failed" in status.message
    )


def test_held_running_and_succeeded_groups():
    assert _group_status([(A, run("pending")), (B, run("running"))]).state == JobState.PENDING
    assert _group_status([(A, run("running")), (B, run("running"))]).message == "2 nodes running"
    done = _group_status([(A, run("succeeded", exit_code=0)), (B, run("running"))])
    assert done.state == JobState.RUNNING and done.message == "1 of 2 nodes still running"
    assert _group_status([(A, run("succeeded")), (B, run("succeeded"))]).state == JobState.SUCCEEDED


def test_a_cancelled_or_timed_out_node_gives_the_group_its_state():
    status = _group_status([(A, run("timeout", exit_code=124, message="timed out after 5s", finished_at=1.0)),
                            (B, run("running"))])  # fmt: skip
    assert status.state == JobState.TIMEOUT and status.release
