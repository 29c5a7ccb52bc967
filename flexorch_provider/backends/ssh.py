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
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any, Literal, TypedDict, cast

from flexorch_provider import multinode
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
from flexorch_provider.backends.sshpool import Host, Session, on_host, reachable
from flexorch_provider.exceptions import BackendError, ConfigurationError, HostError, NoCapacityError, SubmitError
from flexorch_provider.fanout import parallel, reason
from flexorch_provider.multinode import contract
from flexorch_provider.runner import bundle, gang
from flexorch_provider.runner.attempts import attempt_notes
from flexorch_provider.runner.gpus import GPU_REFUSED_EXIT

REMOTE_RUNS = ".flexorch/runs"
REMOTE_SERVICES = ".flexorch/services"
PYTHON = "python3"


def hosts_of(job: ResolvedJob) -> list[Host]:
    opts = job.workload.ssh
    hosts = [Host.parse(h) for h in opts.hosts] or [Host()]
    placed = (job.placement or {}).get("host")
    if placed:  # the GPU pool sensor chose the host
        hosts = [h for h in hosts if h.label == placed or h.host == placed] or [Host.parse(placed)]
    return hosts


def group_hosts(job: ResolvedJob) -> list[Host]:
    """The hosts a multi-node group may use, in rank order: the spec's list (a GPU pool sensor's choice
    of one host and its GPU indices does not apply: each node claims its GPUs by count)."""
    return [Host.parse(h) for h in job.workload.ssh.hosts]


def _whole_group(found: list[tuple[Host, dict[str, Any]]], nodes: int) -> bool:
    """``found`` (hosts' ``live`` answers) is one whole group: every node of it, live nodes or all
    adopted successes."""
    if len(found) != nodes:
        return False
    return all(f.get("gang") for _, f in found) or all(f.get("adopted") for _, f in found)


# --- the job runner on a host -----------------------------------------------------------
def runner_argv() -> list[str]:
    """How a host runs our runner (:func:`.bundle.command`; -S: it needs only the standard library)."""
    return [PYTHON, *bundle.command(bundle.relative_path())]


def run_runner(s: Session, *args: str, stdin: bytes | None = None) -> str:
    """Run the job runner; install it first if this host does not have this version yet.

    Trying first saves an SFTP round trip on every fresh connection to a host that has it.
    A submit this host has no GPUs for is a NoCapacityError: nothing was started here.
    """
    path = bundle.relative_path()
    argv = [*runner_argv(), *args]
    code, out, err = s.exec(argv, stdin)
    if code == 2 and path not in s.installed and bundle.MISSING in err:
        s.install(path, bundle.pyz_bytes(), "the job runner")
        code, out, err = s.exec(argv, stdin)
    if code == 127:
        raise HostError(f"{s.label}: {PYTHON} is not installed on this host; the ssh target needs it")
    if code == GPU_REFUSED_EXIT and args[0] == "submit":
        raise NoCapacityError(f"{s.label}: {err.strip()[-500:]}")
    if code != 0:
        raise s.failed(argv, code, err)
    s.installed.add(path)
    return out


def runner(conn_id: str, host: Host, *args: str, stdin: bytes | None = None) -> str:
    """:func:`run_runner` on the pooled session to ``host``."""
    return on_host(conn_id, host, lambda s: run_runner(s, *args, stdin=stdin))


# --- the backend -----------------------------------------------------------------------
class SshPlaced(TypedDict):
    host: dict[str, Any]  # Host as a dict (host, port, user)
    run_dir: str


class SshJobData(TypedDict):
    """What an ssh handle keeps in ``JobHandle.data``."""

    conn: str  # the Airflow SSH connection
    placement: Literal["any", "all", "nodes"]  # nodes: one multi-node group (resources.nodes > 1)
    hosts: list[SshPlaced]  # one (any), every host (all), or one per node in rank order (nodes)


def job_data(handle: JobHandle) -> SshJobData:
    return cast(SshJobData, handle.data)


class SshBackend(FleetServices, Backend):
    name = "ssh"

    def _fleet(self, job: ResolvedJob) -> Fleet[Host]:
        conn = job.workload.ssh.connection

        def call(host: Host, args: Sequence[str], stdin: bytes | None) -> str:
            return runner(conn, host, *args, stdin=stdin)

        return Fleet(hosts=hosts_of(job), call=call, label=lambda h: h.label, root=REMOTE_SERVICES)

    def gpu_pool(self, workload: Any) -> Any:
        from flexorch_provider.inventory.pools import SshPool

        return SshPool(name="ssh", source="ssh", connection=workload.ssh.connection, hosts=list(workload.ssh.hosts))

    def spans_every_node(self, workload: Any) -> bool:
        return bool(workload.ssh.placement == "all")

    def render(self, job: ResolvedJob) -> str:
        opts = job.workload.ssh
        hosts = hosts_of(job)
        if job.is_service:
            header = f"# ssh: connection {opts.connection!r}; paths are relative to the login's home\n"
            return header + render_service(job, REMOTE_SERVICES, [h.label for h in hosts], runner_argv())
        nodes = job.workload.resources.nodes
        doc = {
            "job_id": f"{job.key_slug}/<attempt>",
            **job_document(replace(job, placement=None) if nodes > 1 else job),
        }
        if nodes > 1:
            doc["gang"] = {"nodes": nodes, "hold_s": gang.HOLD_S}
        stdin = json.dumps({"job": doc, "secrets": {k: "<secret>" for k in job.secrets}}, indent=2)
        key_dir = f"{REMOTE_RUNS}/{job.key_slug}"
        which = "the first reachable of" if opts.placement == "any" else "every one of"
        lines = [
            f"# ssh: connection {opts.connection!r}, placement {opts.placement}: {which} "
            + ", ".join(h.label for h in hosts),
            f"# once per host and runner version: copy the job runner (flexorch_provider/runner as one zipapp) "
            f"to ~/{bundle.relative_path()} (SFTP), unless it is there",
            "# then, on the host (cwd = the login's home):",
            shlex.join([*runner_argv(), "submit", key_dir]) + "   # with this JSON on stdin:",
            stdin,
        ]
        if nodes > 1:
            lines[0] = (
                f"# ssh: connection {opts.connection!r}, resources.nodes {nodes}: one node on each of the first {nodes} "
                f"of {', '.join(h.label for h in group_hosts(job))} that can take one, in that order (rank 0 first)"
            )
            gpus = job.workload.resources.gpus
            example = contract(0, [h.host or h.label for h in group_hosts(job)[:nodes]], gpus.count if gpus else 0, 0)
            example[multinode.MASTER_PORT] = example["MASTER_PORT"] = example["PET_MASTER_PORT"] = "<free on rank 0>"
            lines += [
                "# round 1 on each: the node is held (its GPUs claimed, nothing runs) and answers its address (as "
                "the ssh connection reached it) and a free port; a host that cannot take a node makes the others "
                "withdraw theirs",
                "# round 2 on each: "
                + shlex.join([*runner_argv(), "go", f"{key_dir}/<attempt>"])
                + "   # with its node's contract on stdin, for rank 0:",
                json.dumps({"env": example}, indent=2),
            ]
        lines.append("# the runner starts, in its own session and process group, in ~/" + key_dir + "/<attempt>/:")
        if "container" in doc:
            run_dir = f"~/{key_dir}/<attempt>"
            workdir = job.workdir if job.workdir and job.workdir.startswith("/") else f"~/{job.workdir or run_dir[2:]}"
            lines += container_lines(doc, sorted({*job.secrets, *job.workload.airflow_secrets}), run_dir, workdir)
        else:
            if job.setup:
                lines.append(shlex.join(["/bin/sh", "-c", job.setup]))
            lines.append(shlex.join(["/bin/sh", "-c", job.run] if isinstance(job.run, str) else job.run))
        lines += code_render_lines(job)
        lines += [
            "# status: " + shlex.join([*runner_argv(), "status", f"{key_dir}/<attempt>"]),
            "# logs:   " + shlex.join([*runner_argv(), "log", f"{key_dir}/<attempt>", "<byte offset>"]),
            "# cancel: " + shlex.join([*runner_argv(), "cancel", f"{key_dir}/<attempt>"]),
        ]
        return "\n".join(lines) + "\n"

    def submit(self, job: ResolvedJob) -> JobHandle:
        opts = job.workload.ssh
        conn = opts.connection
        if job.workload.resources.nodes > 1:
            return self._start_group(job)
        hosts = hosts_of(job)
        document = job_document(job)  # GPUs: the runner claims them on the host it starts on
        payload = submit_payload(document, job.secrets, job.registry)
        key_dir = f"{REMOTE_RUNS}/{job.key_slug}"

        # one round per host, in parallel, before anything starts. `any` on several hosts: which
        # host holds a live attempt of this run key? `all`: is every host reachable right now?
        # (`submit` itself reattaches to a live attempt on its host, so `all` needs no lookup.)
        # A single host needs no round at all.
        probes: list[tuple[Host, Any, Exception | None]]
        if len(hosts) == 1:
            probes = [(hosts[0], {}, None)]
        elif opts.placement == "all":
            probes = parallel(hosts, lambda h: reachable(conn, h))
        else:
            probes = parallel(hosts, lambda h: json.loads(runner(conn, h, "live", key_dir)))
        unreachable = {h: reason(e) for h, _, e in probes if e is not None}
        for _, _, e in probes:
            if isinstance(e, ConfigurationError):
                raise e
        # a live attempt before an adopted success, were there both on different hosts
        live = sorted(
            ((h, found) for h, found, e in probes if e is None and found), key=lambda x: bool(x[1].get("adopted"))
        )

        def start(h: Host) -> dict[str, Any]:
            shipped = ship_code(job.code, lambda args, data: runner(conn, h, *args, stdin=data), h.label)
            return dict(json.loads(runner(conn, h, "submit", key_dir, stdin=payload)), shipped=shipped)

        if opts.placement == "any":
            if live:
                h, found = live[0]
                handle = self._handle(job, conn, [(h, found["run_dir"])], found["job_id"])
                return replace(handle, notes=attempt_notes(found, h.label))
            refusals = list(unreachable.values())
            for h, _, e in probes:
                if e is not None:
                    continue
                try:
                    started = start(h)
                except (HostError, NoCapacityError) as err:
                    refusals.append(reason(err))
                    continue
                handle = self._handle(job, conn, [(h, started["run_dir"])], started["job_id"])
                skipped = [f"skipped ssh host {why}" for why in refusals]
                return replace(handle, notes=skipped + started["shipped"] + attempt_notes(started, h.label),
                               first_status=_first_status([(h, started)]))  # fmt: skip
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
        notes = [note for h, r, _ in results for note in r["shipped"] + attempt_notes(r, h.label)]
        handle = self._handle(job, conn, placed, f"{job.key_slug}/{results[0][1]['attempt']}")
        return replace(handle, notes=notes, first_status=_first_status([(h, r) for h, r, _ in results]))

    def find(self, job: ResolvedJob) -> JobHandle | None:
        """The run key's live attempt (or unrecorded success) on the hosts: one ``live`` round. A host
        that cannot be asked is a HostError only when no other host answers."""
        conn = job.workload.ssh.connection
        key_dir = f"{REMOTE_RUNS}/{job.key_slug}"
        group = job.workload.resources.nodes > 1
        looks = parallel(
            group_hosts(job) if group else hosts_of(job), lambda h: json.loads(runner(conn, h, "live", key_dir))
        )
        placed = [(h, found) for h, found, e in looks if e is None and found]
        if not placed:
            errors = [e for _, _, e in looks if e is not None]
            if errors and len(errors) == len(looks):
                raise errors[0]
            return None
        if group:  # a whole group or nothing (submit stops a part of one, then starts a new group)
            if not _whole_group(placed, job.workload.resources.nodes):
                return None
        elif job.workload.ssh.placement != "all":
            placed = placed[:1]
        first = placed[0][1]
        handle = self._handle(job, conn, [(h, f["run_dir"]) for h, f in placed], first["job_id"])
        return replace(handle, notes=[n for h, f in placed for n in attempt_notes(f, h.label)])

    def _handle(self, job: ResolvedJob, conn: str, placed: list[tuple[Host, str]], job_id: str) -> JobHandle:
        placement: Literal["any", "all", "nodes"] = (
            "nodes" if job.workload.resources.nodes > 1 else "all" if job.workload.ssh.placement == "all" else "any"
        )
        where = {"any": placed[0][0].label, "all": f"{len(placed)} hosts", "nodes": f"{len(placed)} nodes"}[placement]
        return JobHandle(
            target=self.name,
            job_id=f"{job_id}@{where}",
            run_key=job.run_key,
            data=dict(
                SshJobData(
                    conn=conn, placement=placement, hosts=[SshPlaced(host=asdict(h), run_dir=d) for h, d in placed]
                )
            ),
        )

    # --- a multi-node group: one node per host, all or none --------------------------------
    def _start_group(self, job: ResolvedJob) -> JobHandle:
        """``resources.nodes: N``: one node on each of N hosts, in two rounds so that nothing runs before
        every node holds its GPUs (:mod:`flexorch_provider.runner.gang`). A group of this run key that is
        there already is reattached (its held nodes started); a part of one (a submit cut off between its
        rounds) is stopped and a new group started."""
        conn, n = job.workload.ssh.connection, job.workload.resources.nodes
        hosts, key_dir = group_hosts(job), f"{REMOTE_RUNS}/{job.key_slug}"
        looks = parallel(hosts, lambda h: json.loads(runner(conn, h, "live", key_dir)))
        for _, _, e in looks:
            if isinstance(e, ConfigurationError):
                raise e
        found = [(h, f) for h, f, e in looks if e is None and f]
        notes: list[str] = []
        if _whole_group(found, n):
            nodes = found
            notes += [f"reattached to node {i} of job {f['job_id']} on {h.label}" for i, (h, f) in enumerate(found)]
        else:
            if found:
                self._withdraw(conn, [(h, f["run_dir"]) for h, f in found if not f.get("adopted")])
                notes.append(
                    f"a part of an earlier group of this run key was there ({', '.join(h.label for h, _ in found)}): "
                    f"stopped it, starting a new group of {n} nodes"
                )
            unreachable = [reason(e) for _, _, e in looks if e is not None]
            nodes = self._hold(job, [h for h, _, e in looks if e is None], unreachable)
        if all(f.get("adopted") for _, f in nodes):  # the whole group succeeded, unrecorded: its result stands
            handle = self._handle(job, conn, [(h, f["run_dir"]) for h, f in nodes], nodes[0][1]["job_id"])
            return replace(handle, notes=[note for h, f in nodes for note in attempt_notes(f, h.label)])
        gpus = job.workload.resources.gpus
        addrs = [f["gang"].get("addr") or h.host or h.label for h, f in nodes]
        port = int(nodes[0][1]["gang"]["port"])

        def go(item: tuple[int, tuple[Host, dict[str, Any]]]) -> dict[str, Any]:
            rank, (h, f) = item
            env = contract(rank, addrs, gpus.count if gpus else 0, port)
            return json.loads(runner(conn, h, "go", f["run_dir"], stdin=json.dumps({"env": env}).encode()))

        started = parallel(list(enumerate(nodes)), go)
        placed = [(h, f["run_dir"]) for h, f in nodes]
        failed = [f"rank {rank} ({h.label}): {reason(e)}" for (rank, (h, _)), _, e in started if e is not None]
        if failed:
            self._withdraw(conn, placed)
            raise SubmitError("could not start every node of the group, so none runs: " + "; ".join(failed))
        handle = self._handle(job, conn, placed, nodes[0][1]["job_id"])
        notes += [note for _, f in nodes for note in f.get("shipped", [])]
        notes += [
            f"node {rank} of {n} on {h.label} ({addrs[rank]}), run dir {f['run_dir']}"
            for rank, (h, f) in enumerate(nodes)
        ]
        notes.append(f"the group meets at {addrs[0]}:{port} (FLEXORCH_MASTER_ADDR, FLEXORCH_MASTER_PORT)")
        first = _group_status([(h, r) for (_, (h, _)), r, _ in started])
        return replace(handle, notes=notes, first_status=first)

    def _hold(self, job: ResolvedJob, hosts: list[Host], refusals: list[str]) -> list[tuple[Host, dict[str, Any]]]:
        """Prepare a held node on N of ``hosts`` (the first that can take one, in their order, which is
        the rank order); all or none: when fewer than N can, the held ones are withdrawn."""
        conn, n = job.workload.ssh.connection, job.workload.resources.nodes
        # each node claims its GPUs by count on its host (a placement's indices name one host's GPUs)
        document = dict(job_document(replace(job, placement=None)), gang={"nodes": n, "hold_s": gang.HOLD_S})
        payload = submit_payload(document, job.secrets, job.registry)
        key_dir = f"{REMOTE_RUNS}/{job.key_slug}"

        def hold_one(h: Host) -> dict[str, Any]:
            shipped = ship_code(job.code, lambda args, data: runner(conn, h, *args, stdin=data), h.label)
            return dict(json.loads(runner(conn, h, "submit", key_dir, stdin=payload)), shipped=shipped)

        held: list[tuple[Host, dict[str, Any]]] = []
        candidates, refusals = list(hosts), list(refusals)
        problem: Exception | None = None
        while len(held) < n and candidates and problem is None:
            batch, candidates = candidates[: n - len(held)], candidates[n - len(held) :]
            for h, answer, e in parallel(batch, hold_one):
                if e is None and answer.get("gang"):
                    held.append((h, answer))
                elif e is None:  # an attempt of this key that is no node (a submit of another version)
                    refusals.append(f"{h.label}: an earlier job of this run key runs there ({answer['job_id']})")
                elif isinstance(e, HostError | NoCapacityError):
                    refusals.append(reason(e))
                else:
                    problem = e
        if len(held) < n or problem is not None:
            self._withdraw(conn, [(h, a["run_dir"]) for h, a in held])
            if problem is not None:
                raise problem
            raise NoCapacityError(
                f"resources.nodes: {n} needs {n} of the ssh hosts to take a node each; only {len(held)} could, so "
                "nothing runs (the held ones were released): " + "; ".join(refusals)
            )
        return sorted(held, key=lambda x: hosts.index(x[0]))

    def _withdraw(self, conn: str, placed: list[tuple[Host, str]]) -> None:
        """Stop these nodes (held or running); what cannot be stopped is left to its own timeout."""
        parallel(placed, lambda p: runner(conn, p[0], "cancel", p[1]))

    def where(self, handle: JobHandle) -> dict[str, Any]:
        data = job_data(handle)
        placed = [(Host(**p["host"]), p["run_dir"]) for p in data["hosts"]]
        hosts = [{"host": h.host or "", "label": h.label, "run_dir": d} for h, d in placed]
        first = hosts[0] if hosts else {"host": "", "label": "", "run_dir": ""}
        summary = ", ".join(f"{h['label']}:{h['run_dir']}" for h in hosts)
        return {"summary": f"ssh {summary} (connection {data['conn']})", "conn": data["conn"], "hosts": hosts,
                "host": first["host"], "label": first["label"], "run_dir": first["run_dir"]}  # fmt: skip

    def furthest(self, a: LogCursor, b: LogCursor) -> LogCursor:
        """Byte offsets, or per-host offsets for a job on every host (``placement: all``)."""
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: max(int(a.get(k, 0)), int(b.get(k, 0))) for k in a.keys() | b.keys()}
        if not a and isinstance(b, dict):
            return {str(k): int(v) for k, v in b.items()}
        return super().furthest(a, b)

    def batch_key(self, handle: JobHandle) -> str:
        labels = ",".join(Host(**p["host"]).label for p in job_data(handle)["hosts"])
        return f"ssh:{job_data(handle)['conn']}:{labels}"

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        by_host: dict[tuple[str, Host], list[str]] = {}
        for handle in handles:
            for p in job_data(handle)["hosts"]:
                by_host.setdefault((job_data(handle)["conn"], Host(**p["host"])), []).append(p["run_dir"])

        def status_of(item: tuple[tuple[str, Host], list[str]]) -> dict[str, dict[str, Any]]:
            (conn, host), dirs = item
            text = runner(conn, host, "status", *dirs)
            return {r["run_dir"]: r for r in map(json.loads, text.splitlines())}

        raw: dict[tuple[Host, str], dict[str, Any]] = {}
        for ((_, host), _dirs), result, error in parallel(by_host.items(), status_of):
            if error is not None:
                raise HostError(f"cannot get job status from {host.label}: {reason(error)}") from error
            for run_dir, status in result.items():
                raw[(host, run_dir)] = status

        out: dict[str, JobStatus] = {}
        for handle in handles:
            parts = [(Host(**p["host"]), raw[(Host(**p["host"]), p["run_dir"])]) for p in job_data(handle)["hosts"]]
            out[handle.job_id] = _group_status(parts) if job_data(handle)["placement"] == "nodes" else _combine(parts)
        return out

    def read_logs(self, handle: JobHandle, cursor: LogCursor) -> LogChunk:
        conn, placed = job_data(handle)["conn"], job_data(handle)["hosts"]
        if job_data(handle)["placement"] == "any":
            p = placed[0]
            text = runner(conn, Host(**p["host"]), "log", p["run_dir"], str(byte_offset(cursor)))
            data = json.loads(text)
            return LogChunk(data["lines"], data["cursor"])
        cursors = dict(cursor) if isinstance(cursor, dict) else {}

        def fetch(p: SshPlaced) -> dict[str, Any]:
            host = Host(**p["host"])
            start = int(cursors.get(host.label, 0))
            return json.loads(runner(conn, host, "log", p["run_dir"], str(start)))

        group = job_data(handle)["placement"] == "nodes"
        lines: list[str] = []
        for rank, (p, data, error) in enumerate(parallel(placed, fetch)):
            if error is not None:
                continue  # this host's lines come next time
            label = Host(**p["host"]).label
            prefix = f"[rank {rank}]" if group else f"[{label}]"
            lines += [f"{prefix} {line}" for line in data["lines"]]
            cursors[label] = data["cursor"]
        return LogChunk(lines, cursors)

    def claim(self, handle: JobHandle) -> None:
        conn = job_data(handle)["conn"]
        for p, _, error in parallel(
            job_data(handle)["hosts"], lambda p: runner(conn, Host(**p["host"]), "claim", p["run_dir"])
        ):
            if error is not None:
                raise HostError(
                    f"cannot mark job {handle.job_id} recorded on {Host(**p['host']).label}: {reason(error)}"
                )

    def cancel(self, handle: JobHandle) -> None:
        conn = job_data(handle)["conn"]

        def stop(p: SshPlaced) -> dict[str, Any]:
            return json.loads(runner(conn, Host(**p["host"]), "cancel", p["run_dir"]))

        problems = []
        for p, result, error in parallel(job_data(handle)["hosts"], stop):
            label = Host(**p["host"]).label
            if error is not None:
                problems.append(reason(error))
            elif result.get("state") in ("pending", "running"):
                problems.append(f"{label}: still running after cancel")
        if problems:
            raise BackendError(f"could not cancel job {handle.job_id} everywhere: " + "; ".join(problems))


def _first_status(started: list[tuple[Host, dict[str, Any]]]) -> JobStatus | None:
    """The status the runners answered the submit with (None from a runner too old to say)."""
    if not all(isinstance(r.get("status"), dict) for _, r in started):
        return None
    return _combine([(h, r["status"]) for h, r in started])


def _group_status(parts: list[tuple[Host, dict[str, Any]]]) -> JobStatus:
    """One status for a multi-node group (``parts`` in rank order): the first node to end other than
    succeeded ends the group, and while others still run, ``release`` has its follower stop them."""
    states = [JobState(s["state"]) for _, s in parts]
    ended = [
        (parts[rank][1].get("finished_at") or 0.0, rank)
        for rank, st in enumerate(states)
        if st.finished and st != JobState.SUCCEEDED
    ]
    live = sum(1 for st in states if not st.finished)
    n = len(parts)
    if ended:
        rank = min(ended)[1]
        h, s = parts[rank]
        said = (
            f"rank {rank} on {h.label} ended {s['state']} (exit {s.get('exit_code')}): {s.get('message', '')}".strip()
        )
        if live:
            said += f"; the other {live} running node(s) are stopped"
        elif len(ended) > 1:
            said += "; then " + ", ".join(f"rank {r} {states[r].value}" for _, r in sorted(ended) if r != rank)
        release = live > 0 or any(x.get("release") for _, x in parts)
        return JobStatus(states[rank], s.get("exit_code"), said, release=release, cause=lost_cause(states[rank]))
    if live == 0:
        return JobStatus(JobState.SUCCEEDED, 0, f"succeeded on all {n} nodes")
    waiting = sum(1 for st in states if st == JobState.PENDING)
    if waiting:
        return JobStatus(JobState.PENDING, message=f"{waiting} of {n} nodes not started yet")
    done = n - live
    return JobStatus(
        JobState.RUNNING, message=f"{n} nodes running" if not done else f"{live} of {n} nodes still running"
    )


def _combine(parts: list[tuple[Host, dict[str, Any]]]) -> JobStatus:
    """One status for a job on one or more hosts: running until all finish; failed if any failed."""
    states = [JobState(s["state"]) for _, s in parts]
    if len(parts) == 1:
        s = parts[0][1]
        return JobStatus(states[0], s.get("exit_code"), s.get("message", ""), release=bool(s.get("release")),
                         cause=lost_cause(states[0]))  # fmt: skip
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
                     f"failed on {len(bad)} of {len(parts)} hosts: {detail}",
                     release=any(s.get("release") for _, s in parts), cause=lost_cause(first))  # fmt: skip
