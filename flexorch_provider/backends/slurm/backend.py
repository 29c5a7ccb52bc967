"""SlurmBackend: submit (reattach or sbatch), batched squeue polls, output files, scancel."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

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
    code_render_lines,
    complete_lines,
)
from flexorch_provider.backends.slurm.cluster import Cluster, SlurmJobData, cluster_of, job_data
from flexorch_provider.backends.slurm.script import (
    CANCEL_SIGNAL,
    KEEP_OUTPUTS_DAYS,
    OUT_DIR,
    PREPARE_OUT_DIR,
    REQUEST_OPTIONS,
    has_secrets_file,
    job_name,
    render_script,
    sbatch_options,
    secrets_file,
)
from flexorch_provider.backends.slurm.states import LIVE_STATES, SQUEUE_FORMAT, from_accounting, squeue_status
from flexorch_provider.exceptions import BackendError, SubmitError

WITHDRAW_WAIT_S = 15.0  # how long withdraw() waits for the controller to report a pending job cancelled


class SlurmBackend(Backend):
    name = "slurm"

    def gpu_pool(self, workload: Any) -> Any:
        from flexorch_provider.inventory.pools import SlurmPool

        s = workload.slurm
        return SlurmPool(name="slurm", source="slurm", connection=s.connection, partition=s.partition)

    def render(self, job: ResolvedJob) -> str:
        """The batch script exactly as submit sends it to sbatch (its comments say how and where)."""
        return render_script(job) + "".join(line + "\n" for line in code_render_lines(job))

    def batch_key(self, handle: JobHandle) -> str:
        return cluster_of(handle).key

    def _handle(self, job: ResolvedJob, cluster: Cluster, job_id: str) -> JobHandle:
        data: SlurmJobData = {"conn": cluster.conn_id, "name": job_name(job), "secrets": has_secrets_file(job)}
        if job.workload.warn_before is not None and not job.workload.image:
            data["warn"] = True  # its batch shell gives a cancel's warning (script.cancel_with_warning)
        return JobHandle(target=self.name, job_id=job_id, run_key=job.run_key, data=dict(data))

    def where(self, handle: JobHandle) -> dict[str, Any]:
        data = job_data(handle)
        cluster = f"the cluster of connection {data['conn']}" if data.get("conn") else "the local cluster"
        return {
            "summary": f"Slurm job {handle.job_id} ({data['name']}) on {cluster}",
            "slurm_job_id": handle.job_id,
            "job_name": data["name"],
            "conn": data.get("conn") or "",
        }

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
        ended = cluster.check(["sh", "-c", PREPARE_OUT_DIR, "sh", OUT_DIR, str(KEEP_OUTPUTS_DAYS), name]).split()
        notes: list[str] = []
        if len(ended) == 3 and ended[2] == "0":  # the latest job of this run key ended, and no try recorded it
            ended_id, ended_code = ended[0], ended[1]
            if ended_code == "0":
                return replace(
                    self._handle(job, cluster, ended_id),
                    notes=[
                        f"Slurm job {ended_id} had already succeeded, but no earlier try recorded it (its worker "
                        "died): taking its result and log instead of running it again"
                    ],
                )
            notes.append(
                f"the previous try's Slurm job {ended_id} ended with exit code {ended_code} without its outcome "
                "reaching Airflow: running it again"
            )
        notes += cluster.ship_code(job)
        if has_secrets_file(job):
            cluster.check(
                ["sh", "-c", 'umask 077 && cat > "$1"', "sh", f"{OUT_DIR}/{name}.secrets"], stdin=secrets_file(job)
            )
        # umask 077: the output file Slurm creates for the job is readable by this account only
        code, out, err = cluster.run(["sh", "-c", "umask 077 && exec sbatch --parsable"], stdin=script)
        if code != 0:
            raise SubmitError(self._explain_refusal(job, cluster, err.strip() or out.strip()))
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SubmitError(f"sbatch printed no job id: {out.strip()[:200]!r}")
        return replace(self._handle(job, cluster, job_id), notes=notes)

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
                row = rows[h.job_id]
                out[h.job_id] = squeue_status(row[1], row[2], row[3], nodes=row[5] if len(row) > 5 else "")
        for h in handles:  # an ended job's secrets file may outlive it (cancelled while pending, node lost)
            if out[h.job_id].state.finished and job_data(h).get("secrets"):
                out[h.job_id] = replace(out[h.job_id], release=True)
        return out

    def _settle_purged(self, cluster: Cluster, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """Jobs the controller forgot (after MinJobAge): accounting (``sacct``, one call) says how
        they ended where the cluster keeps it; otherwise their exit-code files do. A job squeue missed
        that the controller still has live (a requeue in progress: its first run's exit-code file is
        there, and is not its end) keeps its live state."""
        live = self._still_live(cluster, handles)
        handles = [h for h in handles if h.job_id not in live]
        if not handles:
            return live
        return {**live, **self._settle_ended(cluster, handles)}

    @staticmethod
    def _still_live(cluster: Cluster, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """``scontrol show job`` of each job squeue did not list (rare: one call each): those still live."""
        out = {}
        for h in handles:
            code, text, _ = cluster.run(["scontrol", "-o", "show", "job", h.job_id])
            fields = dict(w.split("=", 1) for w in text.split() if "=" in w) if code == 0 else {}
            state = fields.get("JobState", "")
            if state in LIVE_STATES:
                out[h.job_id] = squeue_status(state, fields.get("Reason", ""), "", nodes=fields.get("NodeList", ""))
        return out

    def _settle_ended(self, cluster: Cluster, handles: list[JobHandle]) -> dict[str, JobStatus]:
        out = from_accounting(cluster, handles)
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

    def find(self, job: ResolvedJob) -> JobHandle | None:
        cluster = cluster_of(job)
        live = self._live(cluster, job_name(job))
        return self._handle(job, cluster, live) if live else None

    def withdraw(self, handle: JobHandle) -> bool:
        """``scancel --state=PENDING``: the controller cancels the job only if it is still pending,
        so one that starts at this moment keeps running. Then wait for the controller's word."""
        cluster = cluster_of(handle)
        self._scancel(cluster, handle, "--state=PENDING")
        deadline = time.monotonic() + WITHDRAW_WAIT_S
        while True:
            state = self.poll([handle])[handle.job_id].state
            if state != JobState.PENDING or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if state in (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.TIMEOUT):
            return False  # it started (or ended on its own); a pending one the controller did not cancel stays
        self._forget_secrets(cluster, handle)
        return True

    def claim(self, handle: JobHandle) -> None:
        cluster_of(handle).check(["touch", f"{OUT_DIR}/{job_data(handle)['name']}-{handle.job_id}.claimed"])

    def cancel(self, handle: JobHandle) -> None:
        """``scancel`` returns once the controller has the request; it signals the job's steps and
        ends it by itself (a job that already ended is not an error). Its secrets file goes too: a
        job cancelled before it started never ran the script that removes it."""
        cluster = cluster_of(handle)
        if not (job_data(handle).get("warn") and self._warn_on_cancel(cluster, handle)):
            self._scancel(cluster, handle)
        self._forget_secrets(cluster, handle)

    def _warn_on_cancel(self, cluster: Cluster, handle: JobHandle) -> bool:
        """A running job with warn_before: its batch shell warns the job, and has Slurm cancel it ``before``
        later (``scancel --batch --signal=URG``). False where that cannot be (not running for a few seconds
        yet: its batch shell may not listen yet, and a job that has not started needs no warning)."""
        code, out, _ = cluster.run(["squeue", "-h", "-j", handle.job_id, "-o", "%T|%M"])
        state, _, elapsed = out.strip().partition("|")
        if code != 0 or state != "RUNNING" or elapsed.strip() in ("0:00", "0:01", "0:02", "0:03", "0:04"):
            return False
        code, _, _ = cluster.run(["scancel", "--batch", f"--signal={CANCEL_SIGNAL}", handle.job_id])
        return code == 0

    @staticmethod
    def _scancel(cluster: Cluster, handle: JobHandle, *options: str) -> None:
        """``scancel [OPTIONS] JOB``; a job that has already ended (or is gone) is not an error."""
        argv = ["scancel", *options, handle.job_id]
        code, out, err = cluster.run(argv)
        said = (err.strip() or out.strip())[-500:]
        if code != 0 and not any(gone in said for gone in ("already completing or completed", "Invalid job id")):
            raise BackendError(f"{' '.join(argv)} failed (exit {code}): {said}")

    @staticmethod
    def _forget_secrets(cluster: Cluster, handle: JobHandle) -> None:
        """Remove the job's secrets file: a job that never started never ran the script that does."""
        if job_data(handle).get("secrets", True):
            cluster.check(["rm", "-f", "--", f"{OUT_DIR}/{job_data(handle)['name']}.secrets"])
