"""The backend contract: every target (local, ssh, slurm, kubernetes) implements these five.

::

    render(job)        what would run (script, manifests, commands); no side effects
    submit(job)        start the job, idempotent on job.run_key: a live job with the same
                       run key is returned instead of starting a second one, and so is
                       one that succeeded but was never claimed (its worker died first)
    poll(handles)      status of many jobs at once (one query can serve many jobs); reads
                       only, it never changes a job
    read_logs(h, cur)  log lines after a cursor, and the next cursor (opaque to everyone
                       but the backend, JSON-serializable; ``furthest`` compares two)
    cancel(handle)     stop the job; nothing of it is left running (it asks the scheduler
                       and returns; it does not wait out a slow controller)
    claim(handle)      the job's outcome reached Airflow: a later try runs anew (optional)

Errors: ``submit`` raises SubmitError when this target cannot take the job (the operator
then tries the next target); every other failure is a BackendError (or a subclass), and
library errors (paramiko, kubernetes, subprocess) are mapped onto that tree at the backend
boundary. Services add ``service(job, log)`` on backends with ``runs_services``: bring the
service to the state ``job.action`` asks for (deploy, reconcile, undeploy) and return a
summary; ``service_status`` and ``service_logs`` read a service without changing it (the
flexorch page); spec validation keeps ``kind: service`` off the other targets. ``where(handle)``
says where a job runs (links, the flexorch page).

Handles and statuses (:mod:`flexorch_provider.records`) are plain dataclasses that round-trip
through dicts, so a trigger can carry them across a triggerer restart.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flexorch_provider.code import Bundle, human
from flexorch_provider.exceptions import BackendError, ConfigurationError, SubmitError
from flexorch_provider.records import JobHandle, JobState, JobStatus
from flexorch_provider.runner import logs as runner_logs
from flexorch_provider.spec.models import Job, ServiceSpec, ServiceStep

LogCursor = int | dict[str, int]
MAX_LOG_READ = runner_logs.MAX_LOG_READ


def byte_offset(cursor: LogCursor) -> int:
    """The cursor of a backend whose log is one byte stream (all but ssh ``placement: all``)."""
    if isinstance(cursor, int):
        return cursor
    raise BackendError(f"log cursor {cursor!r} is not a byte offset: it belongs to a job on several hosts")


@dataclass(frozen=True)
class LogChunk:
    lines: list[str]
    cursor: LogCursor


def complete_lines(data: bytes, cursor: int, limit: int = MAX_LOG_READ) -> LogChunk:
    """The complete lines of ``data`` (a log from byte ``cursor`` on) and the cursor past them.

    A partial last line waits for its newline; a line longer than ``limit`` comes in pieces
    (the job runner's own splitting, :func:`flexorch_provider.runner.logs.complete_lines`).
    """
    lines, consumed = runner_logs.complete_lines(data, limit)
    return LogChunk(lines, cursor + consumed)


SERVICE_ACTIONS = ("deploy", "undeploy", "reconcile", "watch")


@dataclass
class ResolvedJob:
    """A workload ready to run: templates rendered, secrets resolved, target chosen.

    Made by :meth:`for_run` (the operator and ``flexorch render`` alike). ``secrets`` holds
    real values: it is never logged, serialized into a trigger, or pushed to XCom (its repr
    hides the values). ``action`` is what a service run does; a job has none.
    """

    run_key: str
    name: str
    kind: str
    workload: Job
    run: str | list[str]
    setup: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    placement: dict[str, Any] | None = None
    action: str | None = None  # services: deploy | undeploy | reconcile
    # a private image's registry login ({registry, login, password}), from container.registry_connection
    registry: dict[str, str] | None = field(default=None, repr=False)
    slots: list[int] | None = None  # an autoscaled service's replica numbers (None: 0..replicas-1)
    code: Bundle | None = field(default=None, repr=False)  # the job's code (flexorch_provider/code.py)

    @classmethod
    def for_run(
        cls,
        workload: Job,
        run_key: str,
        *,
        run: str | list[str] | None = None,
        setup: str | None = None,
        env: dict[str, Any] | None = None,
        workdir: str | None = None,
        secrets: dict[str, str] | None = None,
        action: str | None = None,
        placement: dict[str, Any] | None = None,
        registry: dict[str, str] | None = None,
        code: Bundle | None = None,
    ) -> ResolvedJob:
        """The workload for one run: ``run``/``setup``/``env``/``workdir`` as rendered for it
        (default: the spec's own), a service's action checked (default ``deploy``)."""
        return cls(
            run_key=run_key,
            name=workload.name,
            kind=workload.kind,
            workload=workload,
            run=workload.run if run is None else run,
            setup=workload.setup if setup is None else setup,
            env={k: str(v) for k, v in (workload.env if env is None else env).items()},
            workdir=workload.workdir if workdir is None else workdir,
            secrets=dict(secrets or {}),
            action=check_action(action, workload.is_service),
            placement=placement,
            registry=dict(registry) if registry else None,
            code=code,
        )

    @property
    def is_service(self) -> bool:
        return self.workload.is_service

    @property
    def service(self) -> ServiceSpec | ServiceStep:
        """The workload as a service (its replicas, port, health, update policy)."""
        if not isinstance(self.workload, ServiceSpec | ServiceStep):
            raise ConfigurationError(f"{self.name} is a {self.kind} job, not a service")
        return self.workload

    @property
    def replica_count(self) -> int:
        """How many replicas a service runs now: its autoscaled slots, else the spec's ``replicas``."""
        return len(self.slots) if self.slots is not None else self.service.replicas

    @property
    def timeout_s(self) -> int | None:
        t = self.workload.timeout
        return int(t.total_seconds()) if t is not None else None

    @property
    def key_slug(self) -> str:
        """A filesystem/DNS-safe, unique name for this run key: readable prefix + hash."""
        return run_key_slug(self.run_key)


def check_action(action: str | None, is_service: bool) -> str | None:
    """A service's action (default ``deploy``); a job takes none."""
    if action is None:
        return "deploy" if is_service else None
    action = action.strip()
    if not is_service:
        raise ConfigurationError(f"action={action!r} applies to services only; this spec runs a job to completion")
    if action not in SERVICE_ACTIONS:
        raise ConfigurationError(f"action must be one of {', '.join(SERVICE_ACTIONS)}, not {action!r}")
    return action


def job_document(job: ResolvedJob) -> dict[str, Any]:
    """job.json for the runner (it adds job_id). Secret values are not in it (they go to secrets.json).
    ``gpus`` and ``container`` are there only for a job that asks for them (a service's revision hashes
    this document)."""
    doc: dict[str, Any] = {
        "run_key": job.run_key,
        "argv": job.run if isinstance(job.run, list) else None,
        "script": job.run if isinstance(job.run, str) else None,
        "setup": job.setup,
        "env": job.env,
        "workdir": job.workdir,
        "timeout": job.timeout_s,
        "kill_grace": 10,
    }
    w = job.workload
    gpus = gpu_request(job)
    if gpus:
        doc["gpus"] = gpus
    if job.code is not None:  # the runner starts the job in its own copy of this bundle (runner/code.py)
        doc["code"] = {"digest": job.code.digest}
    if w.checkpoint_dir:  # one folder per run key, the same for every attempt (runner/attempts.py makes it)
        doc["checkpoint_dir"] = checkpoint_dir(job)
    if w.warn_before is not None:  # ahead of the timeout, and of a cancel's SIGTERM
        doc["warn"] = {"signal": w.warn_before.signal, "before": w.warn_before.before.total_seconds()}
    if w.image:  # the job runs in its image (the runner refuses a host without the runtime)
        doc["container"] = {
            "image": w.image,
            "runtime": w.container.runtime,
            "pull": w.container.pull,
            "mounts": [m.model_dump() for m in w.container.mounts],
        }
        if w.resources.shm:
            doc["container"]["shm"] = int(w.resources.shm)
        if w.container.registry_connection:  # its name only: the login travels beside the job (like secrets)
            doc["container"]["registry_connection"] = w.container.registry_connection
    return doc


def checkpoint_dir(job: ResolvedJob) -> str:
    """The run key's checkpoint folder on the target: ``checkpoint_dir``/<run key slug>."""
    return f"{str(job.workload.checkpoint_dir).rstrip('/')}/{job.key_slug}"


def lost_cause(state: JobState) -> str | None:
    """A runner's job whose supervisor died without a result (its host rebooted or was killed): the
    infrastructure's doing (records.CAUSES)."""
    return "host_lost" if state == JobState.LOST else None


def ship_code(bundle: Bundle | None, call: Callable[[Sequence[str], bytes | None], str], where: str) -> list[str]:
    """Make sure ``where`` keeps a job's code ``bundle`` (``call`` runs the job runner there); what the task
    log should say. A host that has it already is sent nothing."""
    if bundle is None:
        return []
    digest = bundle.digest
    if json.loads(call(["code-has", digest], None).splitlines()[0]).get("present"):
        return [f"{bundle.summary()}: already on {where}, nothing sent"]
    data = bundle.tarball()
    call(["code-put", digest], data)
    return [f"{bundle.summary()}: sent {human(len(data))} to {where}"]


def code_render_lines(job: ResolvedJob, limit: int = 100) -> list[str]:
    """``flexorch render``: the files of the job's code, as comments."""
    if job.code is None:
        return []
    b = job.code
    lines = [f"# {b.summary()} (digest {b.digest}) from {b.root}: sent once to where the job runs, which keeps it "
             "in ~/.flexorch/code/<digest>; each run starts in its own copy ($FLEXORCH_CODE_DIR)"]  # fmt: skip
    lines += [f"#   {f.path}  ({human(f.size)}{', executable' if f.executable else ''})" for f in b.files[:limit]]
    if len(b.files) > limit:
        lines.append(f"#   ... and {len(b.files) - limit} more")
    lines += [f"#   left out: {why}" for why in b.skipped]
    return lines


def submit_payload(document: dict[str, Any], secrets: dict[str, str], registry: dict[str, str] | None) -> bytes:
    """What ``jobrunner submit`` reads on stdin (local, ssh, a service's replica): the job document,
    its secret values and registry login — never on a command line."""
    return json.dumps({"job": document, "secrets": secrets, "registry": registry}).encode()


def gpu_request(job: ResolvedJob) -> dict[str, Any] | None:
    """What the runner claims on its host: the placement's GPU indices (from GpuPoolSensor), else
    a count and model from ``resources.gpus``; None for a job without GPUs."""
    placed = (job.placement or {}).get("gpus")
    if placed is not None:
        return {"indices": [int(g) for g in placed]}
    gpus = job.workload.resources.gpus
    if gpus is None or not gpus.count:
        return None
    return {"count": gpus.count, "type": gpus.type, "memory_mib": gpus.memory // 2**20 if gpus.memory else None}


def run_key(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    return f"{dag_id}/{task_id}/{run_id}/{map_index}"


def run_key_slug(key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    readable = re.sub(r"[^a-z0-9]+", "-", "-".join(key.split("/")[:2]).lower()).strip("-")[:40]
    return f"{readable}-{digest}" if readable else digest


class Backend(ABC):
    """One target. Instances are cheap and stateless; all per-job data is in the job/handle."""

    name: ClassVar[str]

    @property
    def runs_services(self) -> bool:
        """Implements :meth:`service` (the capability table says; spec validation reads the same table)."""
        from flexorch_provider import capabilities

        return capabilities.of(self.name).services

    @abstractmethod
    def render(self, job: ResolvedJob) -> str: ...

    @abstractmethod
    def submit(self, job: ResolvedJob) -> JobHandle: ...

    @abstractmethod
    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]: ...

    @abstractmethod
    def read_logs(self, handle: JobHandle, cursor: LogCursor) -> LogChunk: ...

    @abstractmethod
    def cancel(self, handle: JobHandle) -> None: ...

    def service(self, job: ResolvedJob, log: Callable[[str], None]) -> dict[str, Any]:
        """Deploy, reconcile or undeploy a service (``job.action``); a summary for XCom."""
        raise SubmitError(f"the {self.name} target cannot run services (action {job.action!r}) in this version")

    def service_status(self, job: ResolvedJob, metric: dict[str, Any] | None = None) -> dict[str, Any]:
        """A service's replicas now, read only: ``desired``, ``running``, ``healthy``, ``revisions``
        and per replica its ``slot``, ``host`` (host or pod/node), ``state``, ``healthy``; with
        ``metric`` (an autoscale http/command metric), each replica's ``load`` where the target
        reads it on the replica's host."""
        raise SubmitError(f"the {self.name} target runs no services")

    def service_logs(
        self, job: ResolvedJob, slot: int | None = None, cursors: dict[str, int] | None = None, tail: int = 50
    ) -> dict[str, Any]:
        """Each replica's last ``tail`` log lines, or those after its cursor (``cursors``: the
        replica's ``run_dir`` → the ``cursor`` this returned for it last time)."""
        raise SubmitError(f"the {self.name} target runs no services")

    def find(self, job: ResolvedJob) -> JobHandle | None:
        """The live job of ``job``'s run key on this target, without starting anything; None when
        there is none. A task whose spec lets a job move between targets (``target_policy``,
        ``max_pending``) asks every target before it submits anywhere: one live job per run key
        across the list. A backend that cannot look returns None (submit still reattaches there)."""
        return None

    def withdraw(self, handle: JobHandle) -> bool:
        """Take back a job that has not started (``max_pending``): True once it is gone from this
        target, False when it has started meanwhile (it stays: a started job never moves)."""
        if self.poll([handle])[handle.job_id].state != JobState.PENDING:
            return False
        self.cancel(handle)
        return True

    def gpu_pool(self, workload: Job) -> Any:
        """The inventory pool (:mod:`flexorch_provider.inventory.pools`) that holds the GPUs a job of
        ``workload`` may run on here, as its own spec section describes it; None when this target
        cannot say (``first-free`` then leaves it in list order)."""
        return None

    def spans_every_node(self, workload: Job) -> bool:
        """The job runs on every node of its pool at once (so every one must have room)."""
        return False

    def claim(self, handle: JobHandle) -> None:
        """The job's outcome reached Airflow. Until then a later try of its run key adopts a job that
        succeeded (its worker died before recording it) instead of running it again; after, a
        try (a cleared task) runs anew. Backends that keep no such mark rerun, as before."""
        return None

    def furthest(self, a: LogCursor, b: LogCursor) -> LogCursor:
        """The cursor further into this backend's log (a restarted trigger resumes from it)."""
        if isinstance(a, int) and isinstance(b, int):
            return max(a, b)
        return a  # a cursor of another shape is not this backend's

    def batch_key(self, handle: JobHandle) -> str:
        """Handles with the same key are polled together (one query per key per interval)."""
        return self.name

    def where(self, handle: JobHandle) -> dict[str, Any]:
        """Where the job runs, in the words of its target (no secrets): a short ``summary`` line and
        the fields a link template may use (``{host}``, ``{slurm_job_id}``, ``{namespace}``...)."""
        return {"summary": f"{self.name} job {handle.job_id}"}
