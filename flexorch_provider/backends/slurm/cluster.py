"""Where Slurm commands run: the local clients, or a login node over SSH."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import NotRequired, TypedDict, cast

from flexorch_provider.backends.base import JobHandle, ResolvedJob
from flexorch_provider.exceptions import BackendError


class Cluster:
    """Runs Slurm commands (argv lists) locally or on a login node; returns (code, stdout, stderr)."""

    def __init__(self, conn_id: str | None) -> None:
        self.conn_id = conn_id

    @property
    def key(self) -> str:
        return f"slurm:{self.conn_id or 'local'}"

    def run(self, argv: Sequence[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        if self.conn_id is None:
            try:
                done = subprocess.run(
                    list(argv), input=stdin or b"", capture_output=True, timeout=60, cwd=str(Path.home())
                )
            except FileNotFoundError:
                raise BackendError(
                    f"{argv[0]} is not installed here: run Airflow on a Slurm login node, or set slurm.connection "
                    "to an SSH connection of one"
                ) from None
            return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        from flexorch_provider.backends.sshpool import Host, on_host
        from flexorch_provider.exceptions import HostError

        try:
            return on_host(self.conn_id, Host(), lambda s: s.exec(argv, stdin))
        except HostError as e:
            raise BackendError(f"cannot reach the Slurm login node of connection {self.conn_id!r}: {e}") from e

    def ship_code(self, job: ResolvedJob) -> list[str]:
        """Put the job's code bundle in the account's ``~/.flexorch/code`` on the login node (once per
        digest), with the job runner: over the connection, or on this machine."""
        if job.code is None:
            return []
        from flexorch_provider.backends.base import ship_code

        if self.conn_id is None:
            from flexorch_provider.backends.local import call_runner

            return ship_code(job.code, call_runner, "this machine (the Slurm client)")
        from flexorch_provider.backends.ssh import run_runner
        from flexorch_provider.backends.sshpool import Host, on_host

        conn = self.conn_id

        def call(args: Sequence[str], data: bytes | None) -> str:
            return on_host(conn, Host(), lambda s: run_runner(s, *args, stdin=data))

        return ship_code(job.code, call, f"the login node of {conn}")

    def check(self, argv: Sequence[str], stdin: bytes | None = None) -> str:
        code, out, err = self.run(argv, stdin)
        if code == 127:
            raise BackendError(f"{argv[0]} is not installed on the login node ({self.conn_id})")
        if code != 0:
            raise BackendError(f"{argv[0]} failed (exit {code}): {err.strip()[-500:] or out.strip()[-500:]}")
        return out


class SlurmJobData(TypedDict):
    """What a slurm handle keeps in ``JobHandle.data``."""

    conn: str | None  # the login node's SSH connection; None: the local Slurm clients
    name: str  # the job name (``flexorch-<run key slug>``): output and exit-code files are named after it
    secrets: NotRequired[bool]  # a secrets file was written for it: removed when the job has ended
    warn: NotRequired[bool]  # warn_before: a cancel of the running job goes through its batch shell


def job_data(handle: JobHandle) -> SlurmJobData:
    return cast(SlurmJobData, handle.data)


def cluster_of(job_or_handle: ResolvedJob | JobHandle) -> Cluster:
    if isinstance(job_or_handle, JobHandle):
        return Cluster(job_data(job_or_handle).get("conn"))
    return Cluster(job_or_handle.workload.slurm.connection)
