"""The ``ssh`` target: jobs on a fleet of plain hosts, no agent, nothing installed but a file.

Each host gets our job runner (the :mod:`flexorch_provider.runner` package as one zipapp,
standard library only) copied once to ``~/.flexorch/bin/jobrunner-<hash>.pyz``; every action
is one ``python3 -S`` call of it over an SSH channel of a pooled connection
(:mod:`~flexorch_provider.backends.sshpool`, apache-airflow-providers-ssh's ``SSHHook``):

- submit: ``jobrunner submit ~/.flexorch/runs/<run key>`` with the job (and secrets) as
  JSON on stdin — the same detached supervisor, process group, log and result files as the
  ``local`` target; a live attempt of the same run key is reattached, never started twice;
- poll: one ``jobrunner status DIR...`` per host per interval for every job on that host;
- logs: ``jobrunner log DIR CURSOR``; cancel: ``jobrunner cancel DIR`` (process group).

No user value is ever part of a command line: the command is our runner path and a run
directory we named; what to run, its env and args travel as JSON on stdin.

Placement ``any`` takes the first reachable host in the spec's order (after looking for a
live attempt of the same run key on every host); ``all`` runs the same job on every host
in parallel and fails with the list of hosts that failed and why.
"""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from flexorch_provider.backends.base import (
    Backend,
    JobHandle,
    JobState,
    JobStatus,
    LogChunk,
    LogCursor,
    ResolvedJob,
    job_document,
)
from flexorch_provider.backends.services import Fleet, parallel, reason, render_service, run_service
from flexorch_provider.exceptions import BackendError, ConfigurationError, NoCapacityError, SubmitError
from flexorch_provider.runner import bundle
from flexorch_provider.runner.gpus import GPU_REFUSED_EXIT
from flexorch_provider.spec.targets import HOST_ENTRY_RE

RUNNER_SOURCE = bundle.pyz_bytes()  # the runner package as one zipapp
REMOTE_RUNNER = bundle.relative_path()  # .flexorch/bin/jobrunner-<hash>.pyz
REMOTE_RUNS = ".flexorch/runs"
REMOTE_SERVICES = ".flexorch/services"
PYTHON = "python3"
RUNNER_ARGV = (PYTHON, "-S", REMOTE_RUNNER)  # -S: the runner needs only the standard library (a third faster)
CONNECT_TIMEOUT = 5
COMMAND_TIMEOUT = 60
T = TypeVar("T")


class HostError(BackendError):
    """One host could not be reached or its command failed."""


@dataclass(frozen=True)
class Host:
    """One fleet member: ``user@host:port``; unset parts come from the Airflow connection."""

    host: str | None = None
    port: int | None = None
    user: str | None = None

    @classmethod
    def parse(cls, entry: str) -> Host:
        m = HOST_ENTRY_RE.match(entry)
        if not m:
            raise ConfigurationError(f"{entry!r} is not a host entry ('host', 'host:port', 'user@host:port')")
        port = m.group("port")
        return cls(m.group("host") or m.group("ipv6"), int(port) if port else None, m.group("user"))

    @property
    def label(self) -> str:
        text = self.host or "<connection host>"
        if ":" in text:
            text = f"[{text}]"
        return f"{self.user + '@' if self.user else ''}{text}{f':{self.port}' if self.port else ''}"


def hosts_of(job: ResolvedJob) -> list[Host]:
    opts = job.workload.ssh
    hosts = [Host.parse(h) for h in opts.hosts] or [Host()]
    placed = (job.placement or {}).get("host")
    if placed:  # the GPU pool sensor chose the host
        hosts = [h for h in hosts if h.label == placed or h.host == placed] or [Host.parse(placed)]
    return hosts


# --- connections -----------------------------------------------------------------------
class _Session:
    """One SSH connection to one host, reused across polls (paramiko channels are thread-safe)."""

    def __init__(self, conn_id: str, host: Host) -> None:
        from airflow.providers.ssh.hooks.ssh import SSHHook

        try:
            hook = SSHHook(
                ssh_conn_id=conn_id, remote_host=host.host or "", port=host.port, username=host.user,
                conn_timeout=CONNECT_TIMEOUT, conn_retry_attempts=1, keepalive_interval=15,
            )  # fmt: skip
        except Exception as e:
            if type(e).__name__ == "AirflowNotFoundException":
                raise ConfigurationError(
                    f"the Airflow connection {conn_id!r} does not exist; create it (type ssh, with login and key) "
                    f"or set ssh.connection in the spec"
                ) from None
            raise
        self.label = host.label
        try:
            self.client = hook.get_conn()
        except Exception as e:  # paramiko, socket and auth errors
            raise HostError(f"{host.label}: cannot connect: {reason(e)}") from e
        self.runner_ready = False
        self.used = False  # a fresh connection is proof of life; a pooled one needs a command
        self.lock = threading.Lock()

    @property
    def alive(self) -> bool:
        transport = self.client.get_transport()
        return bool(transport and transport.is_active())

    def exec(
        self, argv: Sequence[str], stdin: bytes | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> tuple[int, str, str]:
        """Run ``argv`` (quoted word by word) → (exit code, stdout, stderr); HostError if the host fails us."""
        self.used = True
        command = shlex.join(argv)
        try:
            transport = self.client.get_transport()
            assert transport is not None
            channel = transport.open_session(timeout=CONNECT_TIMEOUT)
            channel.settimeout(timeout)
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin)
            channel.shutdown_write()
            stdout = channel.makefile("rb").read()
            stderr = channel.makefile_stderr("rb").read()
            code = channel.recv_exit_status()
            channel.close()
        except Exception as e:
            raise HostError(f"{self.label}: {reason(e)}") from e
        return code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")

    def run(self, argv: Sequence[str], stdin: bytes | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run ``argv`` (quoted; never user values) and return stdout; a non-zero exit is a HostError."""
        code, stdout, stderr = self.exec(argv, stdin, timeout)
        if code != 0:
            raise self._failed(argv, code, stderr)
        return stdout

    def _failed(self, argv: Sequence[str], code: int, stderr: str) -> HostError:
        tail = stderr.strip()[-500:]
        return HostError(f"{self.label}: `{argv[0]} {' '.join(argv[1:3])}` exited {code}: {tail or 'no output'}")

    def ensure_runner(self) -> None:
        """Copy the job runner once per host and version (write to a temp name, then rename)."""
        if self.runner_ready:
            return
        with self.lock:
            if self.runner_ready:
                return
            try:
                sftp = self.client.open_sftp()
                try:
                    try:
                        sftp.stat(REMOTE_RUNNER)
                    except OSError:
                        for d in (".flexorch", ".flexorch/bin"):
                            try:
                                sftp.mkdir(d, 0o700)
                            except OSError:
                                pass  # exists
                        tmp = f"{REMOTE_RUNNER}.{threading.get_ident()}.tmp"
                        with sftp.open(tmp, "wb") as f:
                            f.write(RUNNER_SOURCE)
                        sftp.chmod(tmp, 0o600)
                        sftp.posix_rename(tmp, REMOTE_RUNNER)
                finally:
                    sftp.close()
            except Exception as e:
                raise HostError(f"{self.label}: cannot install the job runner: {reason(e)}") from e
            self.runner_ready = True

    def runner(self, *args: str, stdin: bytes | None = None) -> str:
        """Run the job runner; install it first if this host does not have this version yet.

        Trying first saves an SFTP round trip on every fresh connection to a host that has it.
        A submit this host has no GPUs for is a NoCapacityError: nothing was started here.
        """
        argv = [*RUNNER_ARGV, *args]
        code, out, err = self.exec(argv, stdin)
        if code == 2 and not self.runner_ready and "can't open file" in err:
            self.ensure_runner()
            code, out, err = self.exec(argv, stdin)
        if code == 127:
            raise HostError(f"{self.label}: {PYTHON} is not installed on this host; the ssh target needs it")
        if code == GPU_REFUSED_EXIT and args[0] == "submit":
            raise NoCapacityError(f"{self.label}: {err.strip()[-500:]}")
        if code != 0:
            raise self._failed(argv, code, err)
        self.runner_ready = True
        return out


_POOL: dict[tuple[str, Host], _Session] = {}
_POOL_LOCK = threading.Lock()


def session(conn_id: str, host: Host) -> _Session:
    key = (conn_id, host)
    with _POOL_LOCK:
        existing = _POOL.get(key)
    if existing is not None and existing.alive:
        return existing
    fresh = _Session(conn_id, host)
    with _POOL_LOCK:
        _POOL[key] = fresh
    return fresh


def forget(conn_id: str, host: Host) -> None:
    with _POOL_LOCK:
        old = _POOL.pop((conn_id, host), None)
    if old is not None:
        old.client.close()


def _on_host(conn_id: str, host: Host, action: Callable[[_Session], T]) -> T:
    """Run ``action`` on a pooled session; a stale pooled connection is replaced once."""
    s = session(conn_id, host)
    try:
        return action(s)
    except HostError:
        if s.alive:
            raise
        forget(conn_id, host)
        return action(session(conn_id, host))


def _reachable(conn_id: str, host: Host) -> dict[str, Any]:
    """Proof of life: a connection made just now, or a trivial command on a pooled one."""
    s = session(conn_id, host)
    if s.used:
        try:
            s.run(["true"], timeout=CONNECT_TIMEOUT)
        except HostError:
            forget(conn_id, host)
            session(conn_id, host)
    s.used = True
    return {}


# --- the backend -----------------------------------------------------------------------
class SshBackend(Backend):
    name = "ssh"

    def service(self, job: ResolvedJob, log: Callable[[str], None]) -> dict[str, Any]:
        conn = job.workload.ssh.connection

        def call(host: Host, args: Sequence[str], stdin: bytes | None) -> str:
            return _on_host(conn, host, lambda s: s.runner(*args, stdin=stdin))

        fleet = Fleet(hosts=hosts_of(job), call=call, label=lambda h: h.label, root=REMOTE_SERVICES)
        return run_service(fleet, job, log)

    def render(self, job: ResolvedJob) -> str:
        opts = job.workload.ssh
        hosts = hosts_of(job)
        if job.action is not None:
            header = f"# ssh: connection {opts.connection!r}; paths are relative to the login's home\n"
            return header + render_service(job, REMOTE_SERVICES, [h.label for h in hosts], RUNNER_ARGV)
        doc = {"job_id": f"{job.key_slug}/<attempt>", **job_document(job)}
        stdin = json.dumps({"job": doc, "secrets": {k: "<secret>" for k in job.secrets}}, indent=2)
        key_dir = f"{REMOTE_RUNS}/{job.key_slug}"
        which = "the first reachable of" if opts.placement == "any" else "every one of"
        lines = [
            f"# ssh: connection {opts.connection!r}, placement {opts.placement}: {which} "
            + ", ".join(h.label for h in hosts),
            f"# once per host and runner version: copy the job runner (flexorch_provider/runner as one zipapp) "
            f"to ~/{REMOTE_RUNNER} (SFTP), unless it is there",
            "# then, on the host (cwd = the login's home):",
            shlex.join([*RUNNER_ARGV, "submit", key_dir]) + "   # with this JSON on stdin:",
            stdin,
            "# the runner starts, in its own session and process group, in ~/" + key_dir + "/<attempt>/:",
        ]
        if job.setup:
            lines.append(shlex.join(["/bin/sh", "-c", job.setup]))
        lines.append(shlex.join(["/bin/sh", "-c", job.run] if isinstance(job.run, str) else job.run))
        lines += [
            "# status: " + shlex.join([*RUNNER_ARGV, "status", f"{key_dir}/<attempt>"]),
            "# logs:   " + shlex.join([*RUNNER_ARGV, "log", f"{key_dir}/<attempt>", "<byte offset>"]),
            "# cancel: " + shlex.join([*RUNNER_ARGV, "cancel", f"{key_dir}/<attempt>"]),
        ]
        return "\n".join(lines) + "\n"

    def submit(self, job: ResolvedJob) -> JobHandle:
        opts = job.workload.ssh
        conn = opts.connection
        hosts = hosts_of(job)
        document = job_document(job)  # GPUs: the runner claims them on the host it starts on
        payload = json.dumps({"job": document, "secrets": job.secrets}).encode()
        key_dir = f"{REMOTE_RUNS}/{job.key_slug}"

        # one round per host, in parallel, before anything starts. `any` on several hosts: which
        # host holds a live attempt of this run key? `all`: is every host reachable right now?
        # (`submit` itself reattaches to a live attempt on its host, so `all` needs no lookup.)
        # A single host needs no round at all.
        if len(hosts) == 1:
            probes = [(hosts[0], {}, None)]
        elif opts.placement == "all":
            probes = parallel(hosts, lambda h: _reachable(conn, h))
        else:
            probes = parallel(hosts, lambda h: _on_host(conn, h, lambda s: json.loads(s.runner("live", key_dir))))
        unreachable = {h: reason(e) for h, _, e in probes if e is not None}
        for _, _, e in probes:
            if isinstance(e, ConfigurationError):
                raise e
        live = [(h, found) for h, found, e in probes if e is None and found]

        def start(h: Host) -> dict[str, Any]:
            return json.loads(_on_host(conn, h, lambda s: s.runner("submit", key_dir, stdin=payload)))

        if opts.placement == "any":
            if live:
                h, found = live[0]
                return self._handle(job, conn, [(h, found["run_dir"])], found["job_id"])
            refusals = list(unreachable.values())
            for h, _, e in probes:
                if e is not None:
                    continue
                try:
                    started = start(h)
                except (HostError, NoCapacityError) as err:
                    refusals.append(reason(err))
                    continue
                return self._handle(job, conn, [(h, started["run_dir"])], started["job_id"])
            raise SubmitError("no ssh host could take the job: " + "; ".join(refusals))

        if unreachable:
            raise SubmitError(
                f"placement all needs every host; nothing was started because {len(unreachable)} of {len(hosts)} "
                "cannot be reached: " + "; ".join(unreachable.values())
            )
        results = parallel(hosts, start)
        failed = [reason(e) for _, _, e in results if e is not None]
        placed = [(h, r["run_dir"]) for h, r, e in results if e is None]
        if failed:
            try:
                self.cancel(self._handle(job, conn, placed, job.key_slug))  # all or nothing
            except BackendError:
                pass  # the submit error below is what the user needs to see
            raise SubmitError("placement all: could not start on " + "; ".join(failed))
        return self._handle(job, conn, placed, f"{job.key_slug}/{results[0][1]['attempt']}")

    def _handle(self, job: ResolvedJob, conn: str, placed: list[tuple[Host, str]], job_id: str) -> JobHandle:
        many = job.workload.ssh.placement == "all"
        return JobHandle(
            target=self.name,
            job_id=f"{job_id}@{len(placed)} hosts" if many else f"{job_id}@{placed[0][0].label}",
            run_key=job.run_key,
            data={
                "conn": conn,
                "placement": "all" if many else "any",
                "hosts": [{"host": asdict(h), "run_dir": d} for h, d in placed],
            },
        )

    def batch_key(self, handle: JobHandle) -> str:
        labels = ",".join(Host(**p["host"]).label for p in handle.data["hosts"])
        return f"ssh:{handle.data['conn']}:{labels}"

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        by_host: dict[tuple[str, Host], list[str]] = {}
        for handle in handles:
            for p in handle.data["hosts"]:
                by_host.setdefault((handle.data["conn"], Host(**p["host"])), []).append(p["run_dir"])

        def status_of(item: tuple[tuple[str, Host], list[str]]) -> dict[str, dict[str, Any]]:
            (conn, host), dirs = item
            text = _on_host(conn, host, lambda s: s.runner("status", *dirs))
            return {r["run_dir"]: r for r in map(json.loads, text.splitlines())}

        raw: dict[tuple[Host, str], dict[str, Any]] = {}
        for ((_, host), _dirs), result, error in parallel(by_host.items(), status_of):
            if error is not None:
                raise HostError(f"cannot get job status from {host.label}: {reason(error)}") from error
            for run_dir, status in result.items():
                raw[(host, run_dir)] = status

        out: dict[str, JobStatus] = {}
        for handle in handles:
            parts = [(Host(**p["host"]), raw[(Host(**p["host"]), p["run_dir"])]) for p in handle.data["hosts"]]
            out[handle.job_id] = _combine(parts)
        return out

    def read_logs(self, handle: JobHandle, cursor: LogCursor) -> LogChunk:
        conn, placed = handle.data["conn"], handle.data["hosts"]
        if handle.data["placement"] == "any":
            p = placed[0]
            text = _on_host(conn, Host(**p["host"]), lambda s: s.runner("log", p["run_dir"], str(int(cursor or 0))))
            data = json.loads(text)
            return LogChunk(data["lines"], data["cursor"])
        cursors = dict(cursor) if isinstance(cursor, dict) else {}

        def fetch(p: dict[str, Any]) -> dict[str, Any]:
            host = Host(**p["host"])
            start = int(cursors.get(host.label, 0))
            return json.loads(_on_host(conn, host, lambda s: s.runner("log", p["run_dir"], str(start))))

        lines: list[str] = []
        for p, data, error in parallel(placed, fetch):
            if error is not None:
                continue  # this host's lines come next time
            label = Host(**p["host"]).label
            lines += [f"[{label}] {line}" for line in data["lines"]]
            cursors[label] = data["cursor"]
        return LogChunk(lines, cursors)

    def cancel(self, handle: JobHandle) -> None:
        conn = handle.data["conn"]

        def stop(p: dict[str, Any]) -> dict[str, Any]:
            return json.loads(_on_host(conn, Host(**p["host"]), lambda s: s.runner("cancel", p["run_dir"])))

        problems = []
        for p, result, error in parallel(handle.data["hosts"], stop):
            label = Host(**p["host"]).label
            if error is not None:
                problems.append(reason(error))
            elif result.get("state") in ("pending", "running"):
                problems.append(f"{label}: still running after cancel")
        if problems:
            raise BackendError(f"could not cancel job {handle.job_id} everywhere: " + "; ".join(problems))


def _combine(parts: list[tuple[Host, dict[str, Any]]]) -> JobStatus:
    """One status for a job on one or more hosts: running until all finish; failed if any failed."""
    states = [JobState(s["state"]) for _, s in parts]
    if len(parts) == 1:
        s = parts[0][1]
        return JobStatus(states[0], s.get("exit_code"), s.get("message", ""))
    if any(not st.finished for st in states):
        running = sum(1 for st in states if not st.finished)
        return JobStatus(JobState.RUNNING, message=f"{running} of {len(parts)} hosts still running")
    bad = [(h, s) for (h, s), st in zip(parts, states, strict=True) if st != JobState.SUCCEEDED]
    if not bad:
        return JobStatus(JobState.SUCCEEDED, 0, f"succeeded on all {len(parts)} hosts")
    detail = "; ".join(
        f"{h.label}: {s['state']} (exit {s.get('exit_code')}) {s.get('message', '')}".strip() for h, s in bad
    )
    first = JobState(bad[0][1]["state"])
    return JobStatus(first if first != JobState.SUCCEEDED else JobState.FAILED, bad[0][1].get("exit_code"),
                     f"failed on {len(bad)} of {len(parts)} hosts: {detail}")  # fmt: skip
