"""The ``local`` target: the job runs on the Airflow worker itself, detached from it.

Each run gets ``<root>/<run-key-slug>/<attempt>/`` and is supervised by the job runner
(:mod:`flexorch_provider.runner`) — the same runner, the same file: its zipapp is written to
``~/.flexorch/bin/jobrunner-<hash>.pyz`` on the worker as on an ssh host, and started the same
way, ``python -S`` (the worker's python, without site-packages), so a job behaves here as it
does on a host. What starts something goes through the runner's command line exactly as on an
ssh host (:func:`call_runner`: ``jobrunner submit KEY_DIR`` with the job and its secrets on
stdin, a service's replicas likewise); status, logs, cancel and the reattach lookups only read
or signal files on this machine, so they call the same runner functions in-process. The
runner outlives the worker, so a worker that dies and comes back (or a retry while the job
still runs) reattaches to the live attempt instead of starting a second one. A finished
attempt is never reattached: a retry after a failure runs again.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypedDict, cast

from flexorch_provider.backends.base import (
    Backend,
    JobHandle,
    JobState,
    JobStatus,
    LogChunk,
    LogCursor,
    ResolvedJob,
    byte_offset,
    code_render_lines,
    job_document,
    lost_cause,
    ship_code,
    submit_payload,
)
from flexorch_provider.backends.container_render import container_lines
from flexorch_provider.backends.services import Fleet, FleetServices, render_service
from flexorch_provider.exceptions import BackendError, JobLostError, NoCapacityError, SubmitError
from flexorch_provider.runner import bundle
from flexorch_provider.runner.attempts import attempt_notes, claim, found
from flexorch_provider.runner.gpus import GPU_REFUSAL_PREFIX, GPU_REFUSED_EXIT
from flexorch_provider.runner.logs import read_log
from flexorch_provider.runner.procs import cancel
from flexorch_provider.runner.status import status


def runner_argv(write: bool = True) -> list[str]:
    """How this worker runs the job runner: its zipapp (written first when missing, unless
    ``write`` is False), with ``-S`` as on an ssh host."""
    if not write:
        return [sys.executable, *bundle.command(bundle.local_path())]
    try:
        return [sys.executable, *bundle.command(bundle.local_copy())]
    except OSError as e:
        raise SubmitError(f"cannot write the job runner to {bundle.local_path()}: {e.strerror or e}") from e


def call_runner(args: Sequence[str], stdin: bytes | None = None, what: str = "job") -> str:
    """Run the job runner on this machine: the same command and JSON an ssh host gets. A submit that
    cannot start (no GPUs here, no container runtime, a run directory it cannot make) is a
    SubmitError (NoCapacityError for the first two): nothing was started, the next target may take it."""
    try:
        done = subprocess.run([*runner_argv(), *args], input=stdin or b"", capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        fail = SubmitError if args[0] == "submit" else BackendError
        raise fail(f"could not run the job runner ({args[0]}): {e}") from e
    err = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode == GPU_REFUSED_EXIT and args[0] == "submit":
        if err.startswith(GPU_REFUSAL_PREFIX):
            raise NoCapacityError(f"this machine cannot give the {what} its GPUs: {err[len(GPU_REFUSAL_PREFIX) :]}")
        raise NoCapacityError(f"this machine cannot run the {what}'s image: {err[-500:]}")
    if done.returncode != 0:
        fail = SubmitError if args[0] == "submit" else BackendError
        raise fail(f"the job runner ({args[0]}) failed: {err[-500:]}")
    return done.stdout.decode("utf-8", "replace")


def run_root(job: ResolvedJob) -> Path:
    configured = job.workload.local.run_dir or os.environ.get("FLEXORCH_RUN_DIR") or "~/.flexorch/runs"
    return Path(configured).expanduser().absolute()


class LocalJobData(TypedDict):
    """What a local handle keeps in ``JobHandle.data``."""

    run_dir: str  # the attempt's run directory on this machine
    host: str  # the machine's hostname: a triggerer elsewhere cannot see the run directory


def job_data(handle: JobHandle) -> LocalJobData:
    return cast(LocalJobData, handle.data)


class LocalBackend(FleetServices, Backend):
    name = "local"

    def _fleet(self, job: ResolvedJob) -> Fleet[str]:
        """Services on the worker itself: one host, the same converge as on an ssh fleet."""
        host = socket.gethostname()

        def call(_host: str, args: Sequence[str], stdin: bytes | None) -> str:
            return call_runner(args, stdin, what="replica")

        return Fleet(hosts=[host], call=call, label=str, root=str(run_root(job) / "_services"))

    def gpu_pool(self, workload: Any) -> Any:
        from flexorch_provider.inventory.pools import LocalPool

        return LocalPool(name="local", source="local")

    def render(self, job: ResolvedJob) -> str:
        if job.is_service:
            root = str(run_root(job) / "_services")
            return render_service(job, root, [socket.gethostname()], runner_argv(write=False))
        run_dir = run_root(job) / job.key_slug / "<attempt>"
        doc = {"job_id": f"{job.key_slug}/<attempt>", **job_document(job)}
        lines = [
            f"# local: runs on this Airflow worker, detached, in {run_dir}",
            f"# secrets (written to secrets.json, 0600, deleted at start): {', '.join(job.secrets) or 'none'}",
            "# job.json:",
            json.dumps(doc, indent=2),
            f"# the job runner: {bundle.local_path()} (flexorch_provider/runner as one zipapp, written when missing)",
            "# started with:",
            shlex.join([*runner_argv(write=False), "start", str(run_dir)]),
        ]
        if "container" in doc:
            workdir = os.path.join(os.path.expanduser("~"), os.path.expanduser(job.workdir or str(run_dir)))
            lines += container_lines(doc, sorted({*job.secrets, *job.workload.airflow_secrets}), str(run_dir), workdir)
        return "\n".join([*lines, *code_render_lines(job)]) + "\n"

    def _handle(self, job: ResolvedJob, run_dir: Path) -> JobHandle:
        return JobHandle(
            target=self.name,
            job_id=f"{run_dir.parent.name}/{run_dir.name}",
            run_key=job.run_key,
            data=dict(LocalJobData(run_dir=str(run_dir), host=socket.gethostname())),
        )

    def where(self, handle: JobHandle) -> dict[str, Any]:
        data = job_data(handle)
        return {
            "summary": f"{data['run_dir']} on the worker {data['host']}",
            "host": data["host"],
            "run_dir": data["run_dir"],
        }

    def submit(self, job: ResolvedJob) -> JobHandle:
        """``jobrunner submit``: a live attempt of the run key is reattached (never a second live job
        per run key, never a finished one run twice), else a new one starts; the runner answers with
        its status, the follower's first look."""
        key_dir = run_root(job) / job.key_slug
        _refuse_if_started_elsewhere(job)
        payload = submit_payload(job_document(job), job.secrets, job.registry)
        shipped = ship_code(job.code, call_runner, "this worker")
        attempt = json.loads(call_runner(["submit", str(key_dir)], payload))
        first = attempt.get("status")
        handle = replace(
            self._handle(job, Path(attempt["run_dir"])),
            notes=shipped + attempt_notes(attempt),
            first_status=JobStatus.from_dict(first) if isinstance(first, dict) else None,
        )
        _record_started(job, handle)
        return handle

    def find(self, job: ResolvedJob) -> JobHandle | None:
        out = found(str(run_root(job) / job.key_slug))
        return replace(self._handle(job, Path(out["run_dir"])), notes=attempt_notes(out)) if out else None

    def claim(self, handle: JobHandle) -> None:
        claim(job_data(handle)["run_dir"])

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        for handle in handles:
            data = job_data(handle)
            run_dir = data["run_dir"]
            if not os.path.isdir(run_dir) and data.get("host") not in (None, socket.gethostname()):
                out[handle.job_id] = _seen_from_elsewhere(handle, str(data["host"]))
                continue
            raw = status(run_dir)
            state = JobState(raw["state"])
            out[handle.job_id] = JobStatus(state, raw.get("exit_code"), raw.get("message", ""),
                                           release=bool(raw.get("release")), cause=lost_cause(state))  # fmt: skip
            if out[handle.job_id].state.finished:
                _forget_started(handle)
        return out

    def read_logs(self, handle: JobHandle, cursor: LogCursor) -> LogChunk:
        return read_log_file(Path(job_data(handle)["run_dir"]), byte_offset(cursor))

    def cancel(self, handle: JobHandle) -> None:
        run_dir = job_data(handle)["run_dir"]
        if not os.path.isdir(run_dir):
            raise JobLostError(f"run directory {run_dir} is gone; nothing to cancel")
        result = cancel(run_dir)
        if result.get("state") in ("pending", "running"):
            raise BackendError(f"job {handle.job_id} is still running after cancel")


def read_log_file(run_dir: Path, cursor: int) -> LogChunk:
    """Complete lines of ``run_dir/log`` after byte ``cursor``; the cursor moves past the last newline read."""
    lines, new_cursor = read_log(str(run_dir), cursor)
    return LogChunk(lines, new_cursor)


# --- a local job and the machine it runs on --------------------------------------------------------
# Which worker started each run key's local job, in the flexorch store: a retry that Airflow runs on
# another worker cannot see or stop that job, so it refuses instead of starting a second copy, until
# the job is seen to end (its follower removes the record) or could no longer be running.
STARTED = "local-jobs"
NO_TIMEOUT_HOLD_S = 24 * 3600  # a job without a timeout is taken to be running this long at most
GRACE_S = 120.0


def _record_started(job: ResolvedJob, handle: JobHandle) -> None:
    import time

    from flexorch_provider.store import get_store

    hold = float(job.timeout_s) + GRACE_S if job.timeout_s else NO_TIMEOUT_HOLD_S
    record = {"host": socket.gethostname(), "job_id": handle.job_id, "at": time.time(), "until": time.time() + hold}
    get_store().put(STARTED, job.key_slug, record)


def _refuse_if_started_elsewhere(job: ResolvedJob) -> None:
    import time

    from flexorch_provider.store import get_store

    record = get_store().get(STARTED, job.key_slug)
    here = socket.gethostname()
    if not isinstance(record, dict) or record.get("host") in (None, here):
        return
    until = float(record.get("until") or 0)
    if until <= time.time():
        return
    raise BackendError(
        f"this task's local job {record.get('job_id')} was started on the worker {record['host']} and may still run "
        f"there; this try runs on {here}, which can neither see nor stop it, so it does not start a second copy. "
        f"Stop it on {record['host']} (its run directory under $FLEXORCH_RUN_DIR) or let it end, then clear the task; "
        f"after {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(until))} (its timeout) it is not waited for"
    )


def _seen_from_elsewhere(handle: JobHandle, host: str) -> JobStatus:
    """A local job asked about from another machine (the flexorch page on the api-server, a
    triggerer elsewhere): running on its worker while the store says it started there and has not
    been seen to end, else lost to this machine."""
    import time

    from flexorch_provider.store import get_store

    here = socket.gethostname()
    record = get_store().get(STARTED, Path(job_data(handle)["run_dir"]).parent.name)
    if (
        isinstance(record, dict)
        and record.get("job_id") == handle.job_id
        and float(record.get("until") or 0) > time.time()
    ):
        return JobStatus(
            JobState.RUNNING, message=f"runs on the worker {host}, which follows it (not visible from {here})"
        )
    return JobStatus(
        JobState.LOST,
        message=f"the local job ran on host {host}, not on {here}: a triggerer or api-server elsewhere cannot see it "
        "(local.defer: false keeps it with its worker)",
    )


def _forget_started(handle: JobHandle) -> None:
    from flexorch_provider.store import get_store

    slug = Path(job_data(handle)["run_dir"]).parent.name
    store = get_store()
    record = store.get(STARTED, slug)
    if isinstance(record, dict) and record.get("job_id") == handle.job_id:
        store.delete(STARTED, slug)
