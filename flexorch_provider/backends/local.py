"""The ``local`` target: the job runs on the Airflow worker itself, detached from it.

Each run gets ``<root>/<run-key-slug>/<attempt>/`` and is supervised by the job runner
(:mod:`flexorch_provider.runner`) — the same runner, the same file: its zipapp is written to
``~/.flexorch/bin/jobrunner-<hash>.pyz`` on the worker as on an ssh host, and started the same
way, ``python -S`` (the worker's python, without site-packages), so a job behaves here as it
does on a host. Status, logs and cancel import the runner's modules and run in-process. The
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
    job_document,
)
from flexorch_provider.backends.container_render import container_lines
from flexorch_provider.backends.services import Fleet, FleetServices, render_service
from flexorch_provider.exceptions import BackendError, JobLostError, NoCapacityError, SubmitError
from flexorch_provider.runner import bundle
from flexorch_provider.runner.attempts import attempt_notes, claim, found, prepare
from flexorch_provider.runner.containers import NoRuntime
from flexorch_provider.runner.gpus import GPU_REFUSED_EXIT, GpuError
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
    runs_services = True

    def _fleet(self, job: ResolvedJob) -> Fleet[str]:
        """Services on the worker itself: one host, the same converge as on an ssh fleet."""
        host = socket.gethostname()

        def call(_host: str, args: Sequence[str], stdin: bytes | None) -> str:
            done = subprocess.run([*runner_argv(), *args], input=stdin or b"", capture_output=True, timeout=120)
            if done.returncode == GPU_REFUSED_EXIT and args[0] == "submit":
                raise NoCapacityError(
                    f"this machine cannot give the replica its GPUs: {done.stderr.decode(errors='replace')[-500:]}"
                )
            if done.returncode != 0:
                raise BackendError(f"job runner {args[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
            return done.stdout.decode("utf-8", "replace")

        return Fleet(hosts=[host], call=call, label=str, root=str(run_root(job) / "_services"))

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
        return "\n".join(lines) + "\n"

    def _handle(self, job: ResolvedJob, run_dir: Path) -> JobHandle:
        return JobHandle(
            target=self.name,
            job_id=f"{run_dir.parent.name}/{run_dir.name}",
            run_key=job.run_key,
            data=dict(LocalJobData(run_dir=str(run_dir), host=socket.gethostname())),
        )

    def where(self, handle: JobHandle) -> dict[str, Any]:
        data = job_data(handle)
        return {"summary": f"{data['run_dir']} on the worker {data['host']}", "host": data["host"],
                "run_dir": data["run_dir"]}  # fmt: skip

    def submit(self, job: ResolvedJob) -> JobHandle:
        key_dir = run_root(job) / job.key_slug
        try:
            attempt = prepare(str(key_dir), job_document(job), job.secrets, job.registry)
        except GpuError as e:
            raise NoCapacityError(f"this machine cannot give the job its GPUs: {e}") from None
        except NoRuntime as e:
            raise NoCapacityError(f"this machine cannot run the job's image: {e}") from None
        except OSError as e:
            raise SubmitError(f"cannot create the run directory under {key_dir}: {e.strerror or e}") from e
        run_dir = Path(attempt["run_dir"])
        handle = replace(self._handle(job, run_dir), notes=attempt_notes(attempt))
        if attempt["reattached"]:
            return handle  # never a second live job per run key, never a finished one run twice
        try:
            subprocess.run(
                [*runner_argv(), "start", str(run_dir)],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise SubmitError(f"could not start the job runner for {run_dir}: {e}") from e
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
                out[handle.job_id] = JobStatus(
                    JobState.LOST,
                    message=f"the local job ran on host {data['host']}, not on {socket.gethostname()}: "
                    "run local jobs with deferrable=False when workers and triggerer are on different hosts",
                )
                continue
            raw = status(run_dir)
            out[handle.job_id] = JobStatus(JobState(raw["state"]), raw.get("exit_code"), raw.get("message", ""),
                                           release=bool(raw.get("release")))  # fmt: skip
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
