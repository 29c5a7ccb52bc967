"""Settling jobs the Slurm controller forgot from accounting rows (our parsing and fallbacks;
the real sacct and a stand-in one run in tests/integration/test_slurm_backend.py)."""

from __future__ import annotations

import subprocess

import pytest

from flexorch_provider.backends.base import JobHandle, JobState
from flexorch_provider.backends.slurm.states import accounted, from_accounting
from flexorch_provider.exceptions import BackendError


class Refusing:
    """A cluster whose sacct cannot be run at all."""

    key = "slurm:test"

    def __init__(self, error):
        self.error = error

    def run(self, argv, stdin=None):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [BackendError("sacct is not installed here"), subprocess.TimeoutExpired(["sacct"], 60), OSError("broken pipe")],
)
def test_no_usable_sacct_means_no_accounting_not_a_failed_poll(error):
    handle = JobHandle("slurm", "17", "k", {"conn": None, "name": "flexorch-x"})
    assert from_accounting(Refusing(error), [handle]) == {}


@pytest.mark.parametrize(
    ("state", "exit_code", "want_state", "want_code"),
    [
        ("COMPLETED", "0:0", JobState.SUCCEEDED, 0),
        ("FAILED", "2:0", JobState.FAILED, 2),
        ("CANCELLED by 0", "0:9", JobState.CANCELLED, 137),
        ("TIMEOUT", "0:0", JobState.TIMEOUT, None),
        ("OUT_OF_MEMORY", "0:125", JobState.FAILED, None),
        ("NODE_FAIL", "0:0", JobState.FAILED, None),
    ],
)
def test_rows_map_to_final_states_and_exit_codes(state, exit_code, want_state, want_code):
    status = accounted("17", state, exit_code)
    assert status is not None and status.state == want_state and status.exit_code == want_code
    assert state.split()[0] in status.message and "17" in status.message


@pytest.mark.parametrize("state", ["RUNNING", "PENDING", "", "SOMETHING_NEW"])
def test_rows_that_are_not_a_known_end_settle_nothing(state):
    assert accounted("17", state, "0:0") is None


class Requeuing:
    """squeue misses a job that is being requeued; the controller still has it, pending; its first run's
    exit-code file (143: killed for the requeue) is there."""

    key = "slurm:test"

    def __init__(self, controller_says: str):
        self.controller_says = controller_says

    def run(self, argv, stdin=None):
        if argv[0] == "squeue":
            return 1, "", "slurm_load_jobs error: Invalid job id specified"
        if argv[0] == "scontrol":
            return (0, self.controller_says, "") if self.controller_says else (1, "", "Invalid job id specified")
        if argv[0] == "sacct":
            return 1, "", "accounting storage is disabled"
        return 0, ".flexorch/slurm/flexorch-x-25.rc 143\n", ""  # the exit-code file reader


def test_a_job_squeue_misses_while_it_is_requeued_stays_live_not_ended_by_its_old_exit_code():
    from flexorch_provider.backends.slurm import SlurmBackend

    handle = JobHandle("slurm", "25", "k", {"conn": None, "name": "flexorch-x"})
    pending = "JobId=25 JobName=flexorch-x JobState=PENDING Reason=BeginTime Dependency=(null) Restarts=1"
    status = SlurmBackend()._poll_cluster(Requeuing(pending), [handle])["25"]
    assert status.state == JobState.PENDING and status.message == "pending: BeginTime"
    gone = SlurmBackend()._poll_cluster(Requeuing(""), [handle])["25"]  # forgotten: its exit-code file says
    assert gone.state == JobState.FAILED and gone.exit_code == 143
