"""Job and pod status (plain dicts from the API) → :class:`JobStatus`.

A finished Job's conditions decide (Complete/SuccessCriteriaMet, Failed/FailureTarget with
DeadlineExceeded as TIMEOUT and OOMKilled called out, and the infrastructure's cause where a
pod was evicted, preempted or lost its node: its ``DisruptionTarget`` condition or its kubelet
``reason``); a Job whose pod can never run
(ImagePullBackOff and friends) is FAILED at once with the reason, though the Job object
itself is still live (only ``cancel`` deletes it); an unschedulable pod stays PENDING with
the scheduler's message. Pure functions: nothing here talks to the cluster.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from flexorch_provider.backends.base import JobState, JobStatus

NEVER_PULLS = {
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}

# a pod's DisruptionTarget reason (Kubernetes ≥ 1.26) or its status reason → records.CAUSES
DISRUPTIONS = {
    "PreemptionByScheduler": "preempted",
    "EvictionByEvictionAPI": "evicted",
    "TerminationByKubelet": "evicted",
    "DeletionByTaintManager": "node_failed",
    "DeletionByPodGC": "node_failed",
    "Evicted": "evicted",
    "NodeLost": "node_failed",
    "Shutdown": "node_failed",
}


def disruption(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(cause, what Kubernetes said) when the infrastructure ended this pod, else None."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            reason = str(cond.get("reason") or "")
            return DISRUPTIONS.get(reason, "evicted"), f"{reason}: {cond.get('message') or 'disrupted'}"
    reason = str(status.get("reason") or "")
    if reason in DISRUPTIONS:
        return DISRUPTIONS[reason], f"{reason}: {status.get('message') or reason}"
    return None


STOPPING_SLACK_S = 30  # past its deletion deadline a pod still "running" has lost its node: waiting ends


def stopping(pods: list[dict[str, Any]], now: float | None = None) -> str | None:
    """The name of a pod still on its way out (deleted, not yet ended: its preStop and grace period),
    until its deletion deadline (``deletionTimestamp``, the end of its grace period) has passed by
    :data:`STOPPING_SLACK_S` (a pod on a lost node stays "Terminating" until the node is gone)."""
    now = time.time() if now is None else now
    for p in pods:
        ended = (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        deadline = p["metadata"].get("deletionTimestamp")
        if deadline and not ended:
            try:
                by = datetime.fromisoformat(str(deadline).replace("Z", "+00:00")).timestamp()
            except ValueError:
                by = now
            if now < by + STOPPING_SLACK_S:
                return str(p["metadata"]["name"])
    return None


def job_finished(job: dict[str, Any]) -> str | None:
    """The type of the condition that ended the Job, or None while it is live."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in (
            "Complete",
            "Failed",
            "SuccessCriteriaMet",
            "FailureTarget",
        ):
            return str(cond["type"])
    return None


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The container's terminated state (now, or its last one), or None."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            return term
    return None


def pod_failure(pod: dict[str, Any]) -> str | None:
    """Why this pod can never run, or None."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in NEVER_PULLS:
            return f"{waiting['reason']}: {waiting.get('message') or 'the image cannot be pulled'} (image {cs.get('image')})"
        if waiting.get("reason") == "CrashLoopBackOff":
            term = terminated(pod) or {}
            return f"CrashLoopBackOff: the container keeps exiting (last exit code {term.get('exitCode')})"
    return None


def job_status(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> JobStatus:
    """The status of a Job (None: not found) from it and its pods."""
    if job is None:
        return JobStatus(JobState.LOST, message="the Job is gone (deleted outside Airflow, or removed after its TTL)")
    done = job_finished(job)
    term = next((t for t in map(terminated, pods) if t), None)
    code = term.get("exitCode") if term else None
    if done in ("Complete", "SuccessCriteriaMet"):
        return JobStatus(JobState.SUCCEEDED, code if code is not None else 0, "the Job completed")
    if done in ("Failed", "FailureTarget"):
        cond = next(c for c in job["status"]["conditions"] if c.get("type") in ("Failed", "FailureTarget"))
        last = stopping(pods)
        if last:  # the job's end is its pod's end: a pod saving its work after a warning still runs
            return JobStatus(JobState.RUNNING, message=f"ending: pod {last} is stopping (its grace period)")
        hit = next((d for d in map(disruption, pods) if d), None)
        if hit and cond.get("reason") != "DeadlineExceeded":
            cause, said = hit
            return JobStatus(JobState.FAILED, code, f"the Job failed: its pod was stopped by the cluster ({said})",
                             cause=cause)  # fmt: skip
        if cond.get("reason") == "DeadlineExceeded":
            return JobStatus(
                JobState.TIMEOUT, code, "DeadlineExceeded: the Job ran past its timeout (activeDeadlineSeconds)"
            )
        if term and term.get("reason") == "OOMKilled":
            return JobStatus(
                JobState.FAILED, code, "OOMKilled: the container ran out of memory (raise resources.memory)"
            )
        detail = f"exit code {code}" if code is not None else (cond.get("message") or cond.get("reason") or "failed")
        return JobStatus(JobState.FAILED, code, f"the Job failed: {detail}")
    for p in pods:
        why = pod_failure(p)
        if why:
            return JobStatus(JobState.FAILED, None, why)
    for p in pods:
        for cond in (p.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return JobStatus(JobState.PENDING, message=f"{cond.get('reason')}: {cond.get('message')}")
    if any((p.get("status") or {}).get("phase") == "Running" for p in pods):
        return JobStatus(JobState.RUNNING, message="running")
    return JobStatus(JobState.PENDING, message="pending: waiting for its pod")


def pods_of(job_name: str, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods of one Job (its controller labels them with the Job's name)."""
    return [
        p
        for p in pods
        if (p["metadata"].get("labels") or {}).get("job-name") == job_name
        or (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == job_name
    ]


def never_starts(job: dict[str, Any], status: JobStatus) -> bool:
    """A Job reported FAILED that Kubernetes still runs: its pod can never start (a bad image)."""
    return status.state == JobState.FAILED and job_finished(job) is None
