"""The records that cross processes: a job's handle and status (backend → trigger → task), the
event following a job ends with (trigger → task), how its target was chosen, and the ``job`` XCom
(task → flexorch page, links, CLI).

Each is a dataclass with ``to_dict``/``from_dict``: the dict is what Airflow stores (trigger kwargs,
trigger events, XCom); everything that reads one goes through its class, so a key is named in one
place.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from flexorch_provider.placement.choice import Choice, number

# failures of the infrastructure, not of the job (``retries.recover`` submits it again, uncounted)
CAUSES = {
    "host_lost": "its host went away (the job's supervisor died with it, or the host stopped answering)",
    "preempted": "it was preempted",
    "node_failed": "its node failed",
    "evicted": "its pod was evicted from its node",
    "no_capacity": "no target had room for it",
    "resume_exit_code": "it exited with a code that asks to be started again (retries.resume_exit_codes)",
}


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


@dataclass(frozen=True)
class JobHandle:
    """How to find a submitted job again: enough to poll, read logs and cancel it.

    ``data`` is the backend's own (each backend documents its keys as a TypedDict);
    ``secret_refs`` are where the job's secrets live, never their values: whoever follows
    the job resolves them to mask its output (:mod:`flexorch_provider.masking`).
    """

    target: str
    job_id: str
    run_key: str
    data: dict[str, Any] = field(default_factory=dict)
    secret_refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what submit wants the task log to say (hosts skipped, why)
    # the job's status as the submit itself saw it (the runner answers with it): the first look of
    # whoever follows the job uses it instead of asking again; never serialized, a restart asks
    first_status: JobStatus | None = field(default=None, compare=False, repr=False)

    def with_secret_refs(self, refs: dict[str, dict[str, Any]]) -> JobHandle:
        return replace(self, secret_refs=dict(refs))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("first_status")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobHandle:
        own = dict(data.get("data") or {})
        refs = data.get("secret_refs") or own.pop("secret_refs", None) or {}  # before 0.2 they sat in data
        return cls(
            target=data["target"],
            job_id=data["job_id"],
            run_key=data["run_key"],
            data=own,
            secret_refs=dict(refs),
            notes=list(data.get("notes") or []),
        )


@dataclass(frozen=True)
class JobStatus:
    """A job's state. ``release``: it has ended, but its scheduler still holds what it took (a
    Kubernetes Job whose pod can never start); whoever follows it cancels it (poll never does)."""

    state: JobState
    exit_code: int | None = None
    message: str = ""
    release: bool = False
    cause: str | None = None  # an ended job's infrastructure cause (CAUSES), where the target tells it

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "exit_code": self.exit_code,
            "message": self.message,
            "release": self.release,
            "cause": self.cause,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobStatus:
        return cls(
            state=JobState(data["state"]),
            exit_code=data.get("exit_code"),
            message=data.get("message", ""),
            release=bool(data.get("release")),
            cause=data.get("cause"),
        )


# --- what a trigger sends back to its task ----------------------------------------------------
EVENT_STATUSES = ("success", "failed", "error", "pending")


@dataclass(frozen=True)
class JobEvent:
    """How following a job ended, from the worker's follow or the trigger (the same builder).

    ``status``: ``success`` / ``failed`` (the job ended: ``state``, ``exit_code``), ``error`` (it could
    not be followed to its end: its outcome is unknown) or ``pending`` (still not started at its
    ``max_pending`` deadline: its task decides where it goes). ``handle`` stays a dict: an event may be
    about a handle that could not be read. ``carry``: what the task gave its trigger to hand back.
    """

    status: str
    handle: dict[str, Any]
    message: str = ""
    state: str | None = None
    exit_code: int | None = None
    log_tail: list[str] = field(default_factory=list)
    log_cursor: Any = 0
    carry: dict[str, Any] | None = None
    cause: str | None = None  # the infrastructure's part in a failure or error (CAUSES), if any

    def to_dict(self) -> dict[str, Any]:
        out = {
            "status": self.status,
            "handle": self.handle,
            "message": self.message,
            "log_tail": list(self.log_tail),
            "log_cursor": self.log_cursor,
        }
        if self.status in ("success", "failed"):
            out.update(state=self.state, exit_code=self.exit_code)
        if self.carry is not None:
            out["carry"] = self.carry
        if self.cause is not None:
            out["cause"] = self.cause
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobEvent:
        status = str(data.get("status"))
        if status not in EVENT_STATUSES:
            status = "error"
        exit_code = data.get("exit_code")
        return cls(
            status=status,
            handle=dict(data.get("handle") or {}),
            message=str(data.get("message") or ""),
            state=data.get("state"),
            exit_code=int(exit_code) if exit_code is not None else None,
            log_tail=list(data.get("log_tail") or []),
            log_cursor=data.get("log_cursor", 0),
            carry=data.get("carry"),
            cause=data.get("cause") if data.get("cause") in CAUSES else None,
        )

    @property
    def job(self) -> JobHandle:
        return JobHandle.from_dict(self.handle)

    @property
    def ended(self) -> bool:
        """The job has ended (success or failure), as opposed to not being followed to its end."""
        return self.status in ("success", "failed")


# --- the ``job`` XCom: what the flexorch page, the links and the CLI read ---------------------
@dataclass(frozen=True)
class JobRecord:
    """Where a task's job runs, pushed as soon as it is submitted (and again when it moves).

    Identifiers only, never secrets: ``handle`` has the job's secret references, not their values."""

    job_id: str
    target: str
    run_key: str
    name: str = ""
    where: dict[str, Any] = field(default_factory=dict)
    gpus: int = 0
    gpu_pool: str | None = None
    owner: str | None = None
    team: str | None = None
    submitted_at: float | None = None
    choice: Choice | None = None
    handle: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0  # how many times this try submitted the job again after the infrastructure failed it
    restart_cause: str | None = None  # why, the last time (CAUSES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "restarts": self.restarts,
            "restart_cause": self.restart_cause,
            "job_id": self.job_id,
            "target": self.target,
            "run_key": self.run_key,
            "name": self.name,
            "where": dict(self.where),
            "gpus": self.gpus,
            "gpu_pool": self.gpu_pool,
            "owner": self.owner,
            "team": self.team,
            "submitted_at": self.submitted_at,
            "choice": self.choice.to_dict(public=True) if self.choice else {},
            "handle": dict(self.handle),
        }

    @classmethod
    def from_dict(cls, data: Any) -> JobRecord | None:
        """The record of an XCom value, or None for one that is not a job's (a service's mark)."""
        if not isinstance(data, dict) or not data.get("job_id"):
            return None
        gpus = data.get("gpus")
        return cls(
            job_id=str(data["job_id"]),
            target=str(data.get("target") or ""),
            run_key=str(data.get("run_key") or ""),
            name=str(data.get("name") or ""),
            where=dict(data.get("where") or {}),
            gpus=int(gpus) if isinstance(gpus, int) else 0,
            gpu_pool=data.get("gpu_pool"),
            owner=data.get("owner"),
            team=data.get("team"),
            submitted_at=number(data.get("submitted_at")),
            choice=Choice.from_dict(data.get("choice")),
            handle=dict(data.get("handle") or {}),
            restarts=int(data["restarts"]) if isinstance(data.get("restarts"), int) else 0,
            restart_cause=data.get("restart_cause") if data.get("restart_cause") in CAUSES else None,
        )

    @property
    def job(self) -> JobHandle | None:
        """The handle to poll the job with, when the record has one."""
        return JobHandle.from_dict(self.handle) if self.handle else None

    @property
    def summary(self) -> str:
        return str(self.where.get("summary") or f"{self.target} job {self.job_id}")


def public(handle: JobHandle) -> dict[str, Any]:
    """What a task returns to XCom about its job: identifiers only, never secrets."""
    return {"job_id": handle.job_id, "target": handle.target, "run_key": handle.run_key}
