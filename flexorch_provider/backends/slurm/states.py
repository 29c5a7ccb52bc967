"""Slurm's job states and accounting rows → our JobStatus, with the reason in words."""

from __future__ import annotations

import subprocess

from flexorch_provider.backends.base import JobHandle, JobState, JobStatus
from flexorch_provider.backends.slurm.cluster import Cluster
from flexorch_provider.exceptions import BackendError

LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD"}
STATES = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "SUSPENDED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "TIMEOUT": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
    "FAILED": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
}
WHY = {
    "OUT_OF_MEMORY": "the job ran out of memory (raise resources.memory)",
    "NODE_FAIL": "its node failed (retries.recover submits it again, uncounted)",
    "PREEMPTED": "it was preempted by a higher-priority job (retries.recover submits it again, uncounted)",
    "BOOT_FAIL": "its node failed to boot (retries.recover submits it again, uncounted)",
    "DEADLINE": "it missed its deadline",
    "TIMEOUT": "it reached its time limit (the spec's timeout)",
    "CANCELLED": "it was cancelled (scancel)",
}
CAUSES = {"NODE_FAIL": "node_failed", "BOOT_FAIL": "node_failed", "PREEMPTED": "preempted"}  # records.CAUSES
SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,exit_code:|,Name:|,NodeList:|"


def from_accounting(cluster: Cluster, handles: list[JobHandle]) -> dict[str, JobStatus]:
    """Final states of finished jobs from ``sacct`` (one call for all); {} where the cluster keeps
    no accounting ("accounting storage is disabled") or has no record of a job yet."""
    ids = ",".join(h.job_id for h in handles)
    try:
        code, text, _ = cluster.run(["sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobIDRaw,State,ExitCode"])
    except (BackendError, OSError, subprocess.SubprocessError):  # no sacct here, or slurmdbd hangs
        return {}
    if code != 0:
        return {}
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():  # oldest first: a reused job id's newest row wins
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[0].isdigit():
            rows[parts[0]] = parts
    settled = {job_id: accounted(*row) for job_id, row in rows.items()}
    return {job_id: status for job_id, status in settled.items() if status is not None}


def accounted(job_id: str, state: str, exit_code: str) -> JobStatus | None:
    """One sacct row (``State`` like "CANCELLED by 1000", ``ExitCode`` as "code:signal") → a final
    status. None where accounting still has the job live: the controller forgot it, so it ended
    at least MinJobAge ago, and accounting that far behind is not to be believed."""
    state = state.split()[0] if state else ""
    mapped = STATES.get(state)
    if mapped is None or not mapped.finished:
        return None
    number, _, signal = exit_code.partition(":")
    code = int(number) if number.isdigit() else None
    if code == 0 and mapped != JobState.SUCCEEDED:  # ended by a signal, or by Slurm itself
        code = 128 + int(signal) if signal.isdigit() and 0 < int(signal) < 65 else None
    why = WHY.get(state, "")
    message = state + (f": {why}" if why else "") + (f" (exit code {code})" if code is not None else "")
    return JobStatus(mapped, code, f"{message}; job {job_id} already left the queue, from accounting",
                     cause=CAUSES.get(state))  # fmt: skip


def squeue_status(state: str, reason: str, wait_status: str, nodes: str = "") -> JobStatus:
    state = state.split()[0] if state else "UNKNOWN"
    mapped = STATES.get(state, JobState.PENDING if state not in ("", "UNKNOWN") else JobState.LOST)
    code: int | None = None
    if wait_status.isdigit():
        ws = int(wait_status)
        code = (ws >> 8) & 0xFF if ws & 0x7F == 0 else 128 + (ws & 0x7F)
    if mapped == JobState.PENDING:
        return JobStatus(mapped, message=f"pending: {reason}" if reason and reason != "None" else "pending")
    if mapped == JobState.RUNNING:
        return JobStatus(mapped, message=f"running on {nodes}" if nodes and nodes != "(null)" else "running")
    why = WHY.get(state, "")
    message = f"{state}" + (f": {why}" if why else "") + (f" (exit code {code})" if code is not None else "")
    return JobStatus(mapped, code, message, cause=CAUSES.get(state))
