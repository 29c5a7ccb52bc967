"""The ``slurm`` target: an sbatch script rendered from the spec, followed in batches.

Commands go to the cluster either through the local Slurm clients (Airflow runs on a login
node: ``slurm.connection`` unset) or over SSH to a login node (an Airflow SSH connection,
through the same pooled ``SSHHook`` sessions as the ssh target). Every command is an argv
list we build from our own names; the script itself — where the spec's ``run`` lives —
travels on sbatch's stdin, and secret values go to a 0600 file the script sources (never
into the script, which Slurm keeps and shows to ``scontrol write batch_script``).

- submit: a live job named ``flexorch-<run key slug>`` is reattached, never submitted twice;
  otherwise ``sbatch --parsable`` with the script on stdin. An impossible request (more GPUs
  than a node has, an unknown GPU type) fails at once with what the partition offers.
- poll: **one** ``squeue -j id,id,...`` per cluster per interval for all followed jobs. A job
  the controller already forgot is settled from accounting (one ``sacct`` call) where the
  cluster keeps it, else from the exit-code file the script writes.
- logs: the job's output file, read from a byte offset (``tail -c``) — complete lines only.
- cancel: ``scancel``: the controller has taken the request when it returns, and ends the
  job on its own (the follower's next poll sees CANCELLED); nothing waits out a slow node.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict, cast

from flexorch_provider.backends.base import (
    MAX_LOG_READ,
    Backend,
    JobHandle,
    JobState,
    JobStatus,
    LogChunk,
    LogCursor,
    ResolvedJob,
    byte_offset,
    complete_lines,
)
from flexorch_provider.exceptions import BackendError, ConfigurationError, SubmitError

OUT_DIR = ".flexorch/slurm"  # relative to the submitting account's home (sbatch's cwd)
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD"}
STATES = {
    "PENDING": JobState.PENDING, "CONFIGURING": JobState.PENDING, "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING, "REQUEUE_FED": JobState.PENDING, "SUSPENDED": JobState.PENDING,
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "RESIZING": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED, "TIMEOUT": JobState.TIMEOUT, "CANCELLED": JobState.CANCELLED,
    "FAILED": JobState.FAILED, "OUT_OF_MEMORY": JobState.FAILED, "NODE_FAIL": JobState.FAILED,
    "PREEMPTED": JobState.FAILED, "BOOT_FAIL": JobState.FAILED, "DEADLINE": JobState.FAILED,
}  # fmt: skip
WHY = {
    "OUT_OF_MEMORY": "the job ran out of memory (raise resources.memory)",
    "NODE_FAIL": "its node failed; the task's retries apply",
    "PREEMPTED": "it was preempted by a higher-priority job; the task's retries apply",
    "BOOT_FAIL": "its node failed to boot; the task's retries apply",
    "DEADLINE": "it missed its deadline",
    "TIMEOUT": "it reached its time limit (the spec's timeout)",
    "CANCELLED": "it was cancelled (scancel)",
}
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,exit_code:|,Name:|"


# --- where commands run ------------------------------------------------------------------
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


def job_data(handle: JobHandle) -> SlurmJobData:
    return cast(SlurmJobData, handle.data)


def cluster_of(job_or_handle: ResolvedJob | JobHandle) -> Cluster:
    if isinstance(job_or_handle, JobHandle):
        return Cluster(job_data(job_or_handle).get("conn"))
    return Cluster(job_or_handle.workload.slurm.connection)


# --- the script --------------------------------------------------------------------------
def job_name(job: ResolvedJob) -> str:
    return f"flexorch-{job.key_slug}"


def sbatch_options(job: ResolvedJob) -> list[str]:
    w = job.workload
    opts = w.slurm
    res = w.resources
    lines = [f"--job-name={job_name(job)}", f"--output={OUT_DIR}/%x-%j.out", "--open-mode=append", "--export=NONE"]
    lines.append(f"--nodes={res.nodes}")
    if res.nodes > 1:
        lines.append("--ntasks-per-node=1")
    if res.cpus:
        lines.append(f"--cpus-per-task={math.ceil(res.cpus)}")
    if res.memory:
        lines.append(f"--mem={math.ceil(res.memory / 2**20)}M")
    if res.gpus and res.gpus.count:
        gpu_type = f"{res.gpus.type.lower()}:" if res.gpus.type else ""
        lines.append(f"--gres=gpu:{gpu_type}{res.gpus.count}")
    if job.timeout_s:
        lines.append(f"--time={math.ceil(job.timeout_s / 60)}")
    for key in ("partition", "account", "qos"):
        if getattr(opts, key):
            lines.append(f"--{key}={getattr(opts, key)}")
    for key, value in opts.options.items():
        if value is True:
            lines.append(f"--{key}")
        elif value is not False:
            lines.append(f"--{key}={value}")
    return lines


def render_script(job: ResolvedJob) -> str:
    """The exact batch script. User values appear only as quoted words or inside a quoted heredoc."""
    for key in (*job.env, *job.secrets):
        if not ENV_KEY.match(key):
            raise ConfigurationError(f"environment variable name {key!r} is not valid in a shell")
    w = job.workload
    run = job.run if isinstance(job.run, str) else shlex.join(job.run)
    body = f"{job.setup or ''}\n{run}"
    salt = 0
    delimiter = ""
    while not delimiter or delimiter in body:  # a heredoc end marker the text cannot contain
        delimiter = "FLEXORCH_" + hashlib.sha256(f"{salt}:{body}".encode()).hexdigest()[:16].upper()
        salt += 1
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in sbatch_options(job))]
    lines += [
        "# written by flexorch: the run key, environment, setup and run of one task",
        f"export FLEXORCH_RUN_KEY={shlex.quote(job.run_key)}",
        'export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"',
        *(f"export {k}={shlex.quote(v)}" for k, v in job.env.items()),
        f'flexorch_dir="$SLURM_SUBMIT_DIR/{OUT_DIR}"',
        'flexorch_rc="$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.rc"',
        'flexorch_secrets="$flexorch_dir/$SLURM_JOB_NAME.secrets"',
        'if [ -f "$flexorch_secrets" ]; then . "$flexorch_secrets"; fi',
        'trap \'code=$?; echo "$code" > "$flexorch_rc"; rm -f "$flexorch_secrets"\' EXIT',
    ]
    if w.resources.nodes > 1:
        lines += [
            'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            'export MASTER_PORT="${MASTER_PORT:-29500}"',
            'export WORLD_SIZE="$SLURM_NNODES"',
        ]
    if job.workdir:
        lines.append(f"cd {shlex.quote(job.workdir)} || exit 1")
    if job.setup:
        lines += [f"bash -e <<'{delimiter}' || exit $?", job.setup, delimiter]
    script = '"$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.sh"'
    lines += [f"cat > {script} <<'{delimiter}'", run, delimiter]
    if w.resources.nodes > 1:
        # one task per node; each learns its rank from srun
        lines.append(
            f'srun --kill-on-bad-exit=1 bash -c \'export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID"; '
            f'exec bash "$0"\' {script}'
        )
    else:
        lines.append(f"bash {script}")
    return "\n".join(lines) + "\n"


def _secrets_file(job: ResolvedJob) -> bytes:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in job.secrets.items()).encode()


# --- the backend -------------------------------------------------------------------------
class SlurmBackend(Backend):
    name = "slurm"

    def render(self, job: ResolvedJob) -> str:
        where = (
            f"over SSH on the login node of connection {job.workload.slurm.connection!r}"
            if job.workload.slurm.connection
            else "with the local sbatch"
        )
        header = [
            f"# slurm: submitted {where}, from the account's home, as: sbatch --parsable < script",
            f"# secrets ({', '.join(job.secrets) or 'none'}) go to {OUT_DIR}/{job_name(job)}.secrets (0600), "
            "sourced by the script and deleted when it ends",
        ]
        return "\n".join(header) + "\n" + render_script(job)

    def batch_key(self, handle: JobHandle) -> str:
        return cluster_of(handle).key

    def _handle(self, job: ResolvedJob, cluster: Cluster, job_id: str) -> JobHandle:
        data: SlurmJobData = {"conn": cluster.conn_id, "name": job_name(job)}
        return JobHandle(target=self.name, job_id=job_id, run_key=job.run_key, data=dict(data))

    def _live(self, cluster: Cluster, name: str) -> str | None:
        out = cluster.check(["squeue", "-h", "-n", name, "-o", "%i|%T"])
        for line in out.splitlines():
            job_id, _, state = line.strip().partition("|")
            if state in LIVE_STATES:
                return job_id
        return None

    def submit(self, job: ResolvedJob) -> JobHandle:
        """Reattach or sbatch; any failure on the way means this cluster cannot take the job now."""
        cluster = cluster_of(job)
        try:
            return self._submit(job, cluster)
        except SubmitError:
            raise
        except BackendError as e:
            raise SubmitError(f"Slurm ({cluster.conn_id or 'local clients'}) cannot take the job: {e}") from e

    def _submit(self, job: ResolvedJob, cluster: Cluster) -> JobHandle:
        script = render_script(job).encode()
        name = job_name(job)
        try:
            live = self._live(cluster, name)
        except BackendError as e:
            raise SubmitError(f"cannot reach the Slurm controller: {e}") from e
        if live:
            return self._handle(job, cluster, live)  # never a second submission per run key
        cluster.check(["mkdir", "-p", "-m", "700", OUT_DIR])
        if job.secrets:
            cluster.check(
                ["sh", "-c", 'umask 077 && cat > "$1"', "sh", f"{OUT_DIR}/{name}.secrets"], stdin=_secrets_file(job)
            )
        code, out, err = cluster.run(["sbatch", "--parsable"], stdin=script)
        if code != 0:
            raise SubmitError(self._explain_refusal(job, cluster, err.strip() or out.strip()))
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SubmitError(f"sbatch printed no job id: {out.strip()[:200]!r}")
        return self._handle(job, cluster, job_id)

    def _explain_refusal(self, job: ResolvedJob, cluster: Cluster, error: str) -> str:
        request = " ".join(o for o in sbatch_options(job) if o.split("=")[0] in REQUEST_OPTIONS)
        text = f"sbatch refused {request or 'the job'}: {error.removeprefix('sbatch: error: ')}"
        partition = job.workload.slurm.partition
        argv = ["sinfo", "-h", "-o", "%P|%D|%c|%m|%G"] + (["-p", partition] if partition else [])
        code, out, _ = cluster.run(argv)
        if code == 0 and out.strip():
            offers = "; ".join(
                f"partition {p.rstrip('*')}: {n} node(s) with {c} CPUs, {m} MB, GRES {g}"
                for p, n, c, m, g in (line.split("|") for line in out.strip().splitlines())
            )
            text += f" — the cluster offers: {offers}"
        return text

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        by_cluster: dict[str, list[JobHandle]] = {}
        for h in handles:
            by_cluster.setdefault(cluster_of(h).key, []).append(h)
        out: dict[str, JobStatus] = {}
        for group in by_cluster.values():
            out.update(self._poll_cluster(cluster_of(group[0]), group))
        return out

    def _poll_cluster(self, cluster: Cluster, handles: list[JobHandle]) -> dict[str, JobStatus]:
        ids = ",".join(h.job_id for h in handles)
        code, text, err = cluster.run(["squeue", "-h", "-t", "all", "-j", ids, "-O", SQUEUE_FORMAT])
        if code != 0 and "Invalid job id" not in err:
            raise BackendError(f"squeue failed (exit {code}): {err.strip()[-300:]}")
        rows = {}
        for line in text.splitlines():
            parts = line.split("|")
            if len(parts) >= 4 and parts[0].strip():
                rows[parts[0].strip()] = [p.strip() for p in parts]
        out: dict[str, JobStatus] = {}
        gone = [h for h in handles if h.job_id not in rows]
        if gone:
            out.update(self._settle_purged(cluster, gone))
        for h in handles:
            if h.job_id in rows:
                out[h.job_id] = _status(*rows[h.job_id][1:4])
        return out

    def _settle_purged(self, cluster: Cluster, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """Jobs the controller forgot (after MinJobAge): accounting (``sacct``, one call) says how
        they ended where the cluster keeps it; otherwise their exit-code files do."""
        out = _from_accounting(cluster, handles)
        rest = [h for h in handles if h.job_id not in out]
        return {**out, **self._from_exit_code_files(cluster, rest)} if rest else out

    def _from_exit_code_files(self, cluster: Cluster, handles: list[JobHandle]) -> dict[str, JobStatus]:
        files = [f"{OUT_DIR}/{job_data(h)['name']}-{h.job_id}.rc" for h in handles]
        reader = 'for f do if [ -f "$f" ]; then printf "%s %s\\n" "$f" "$(cat "$f")"; fi; done'
        _, text, _ = cluster.run(["sh", "-c", reader, "sh", *files])
        found = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
        out = {}
        for h, f in zip(handles, files, strict=True):
            rc = found.get(f, "").strip()
            if rc.lstrip("-").isdigit():
                state = JobState.SUCCEEDED if int(rc) == 0 else JobState.FAILED
                out[h.job_id] = JobStatus(state, int(rc), f"exit code {rc} (job {h.job_id} already left the queue)")
            else:
                out[h.job_id] = JobStatus(
                    JobState.LOST,
                    message=f"Slurm no longer knows job {h.job_id} and it left no exit code: it was cancelled, timed "
                    "out or lost its node before its script ended (configure accounting/sacct for the details)",
                )
        return out

    def read_logs(self, handle: JobHandle, cursor: LogCursor) -> LogChunk:
        start = byte_offset(cursor)
        path = f"{OUT_DIR}/{job_data(handle)['name']}-{handle.job_id}.out"
        if job_data(handle).get("conn") is None:  # the output file is on this machine
            try:
                with open(Path.home() / path, "rb") as f:
                    f.seek(start)
                    data = f.read(MAX_LOG_READ)
            except OSError:
                return LogChunk([], start)  # not written yet (pending)
        else:
            code, text, _ = cluster_of(handle).run(["tail", "-c", f"+{start + 1}", path])
            if code != 0:
                return LogChunk([], start)
            data = text.encode()
        return complete_lines(data, start)

    def cancel(self, handle: JobHandle) -> None:
        """``scancel`` returns once the controller has the request; it signals the job's steps and
        ends it by itself (a job that already ended is not an error)."""
        code, out, err = cluster_of(handle).run(["scancel", handle.job_id])
        said = (err.strip() or out.strip())[-500:]
        if code != 0 and not any(gone in said for gone in ("already completing or completed", "Invalid job id")):
            raise BackendError(f"scancel {handle.job_id} failed (exit {code}): {said}")


REQUEST_OPTIONS = {"--nodes", "--cpus-per-task", "--mem", "--gres", "--time", "--partition", "--account", "--qos"}


def _from_accounting(cluster: Cluster, handles: list[JobHandle]) -> dict[str, JobStatus]:
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
    settled = {job_id: _accounted(*row) for job_id, row in rows.items()}
    return {job_id: status for job_id, status in settled.items() if status is not None}


def _accounted(job_id: str, state: str, exit_code: str) -> JobStatus | None:
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
    return JobStatus(mapped, code, f"{message}; job {job_id} already left the queue, from accounting")


def _status(state: str, reason: str, wait_status: str) -> JobStatus:
    state = state.split()[0] if state else "UNKNOWN"
    mapped = STATES.get(state, JobState.PENDING if state not in ("", "UNKNOWN") else JobState.LOST)
    code: int | None = None
    if wait_status.isdigit():
        ws = int(wait_status)
        code = (ws >> 8) & 0xFF if ws & 0x7F == 0 else 128 + (ws & 0x7F)
    if mapped == JobState.PENDING:
        return JobStatus(mapped, message=f"pending: {reason}" if reason and reason != "None" else "pending")
    if mapped == JobState.RUNNING:
        return JobStatus(mapped, message="running")
    why = WHY.get(state, "")
    message = f"{state}" + (f": {why}" if why else "") + (f" (exit code {code})" if code is not None else "")
    return JobStatus(mapped, code, message)
