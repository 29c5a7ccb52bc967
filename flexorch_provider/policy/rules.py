"""A workload against its team's rules: each refusal names the rule, the team and the numbers.

Static rules (targets, partitions, hosts, images, GPUs, timeout, secrets, services) apply to a
submission and to a spec in the dags folder alike; the budget and the concurrency limit need the
ledger of what ran (:mod:`.ledger`) and apply to submissions."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from flexorch_provider.exceptions import SpecProblem
from flexorch_provider.policy.model import Policy, Team, hours
from flexorch_provider.spec.models import Job, PipelineSpec, SpecModel


def gpus_of(job: Job) -> int:
    """The most GPUs a job can hold at once, however it asks: per node (``resources.gpus``, or
    ``gpus-per-node`` / ``gpus-per-task`` × ``ntasks-per-node`` in ``slurm.options``) × nodes, on
    every host for ssh ``placement: all``, × replicas for a service (its autoscale maximum). With
    several targets, the target where it would hold the most."""
    g = job.resources.gpus
    per_node = g.count if g else 0
    most = 0
    for target in job.target:
        here = per_node * job.resources.nodes
        if target == "slurm":
            opts = job.slurm.options
            tasks = max(1, _count(opts.get("ntasks-per-node")))
            slurm_node = max(per_node, _count(opts.get("gpus-per-node")), _count(opts.get("gpus-per-task")) * tasks)
            here = slurm_node * job.resources.nodes
        elif target == "ssh" and job.ssh.placement == "all":
            here = per_node * max(1, len(job.ssh.hosts))
        most = max(most, here)
    if job.is_service:
        most *= _replicas(job)
    return most


def tries_of(job: Job) -> int:
    """How many times a job may run: once, and once per retry, each of those once more per recovery
    (retries.recover: a resume exit code is the job's own choice, so its runs count too)."""
    return (1 + job.retries.count) * (1 + job.retries.recover)


def _count(value: object) -> int:
    """The GPU count of an sbatch value: ``2``, ``"2"``, ``"a100:2"``; 0 for anything else."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    text = str(value or "").rsplit(":", 1)[-1]
    return int(text) if text.isdigit() else 0


def _replicas(job: Job) -> int:
    service = job  # a service spec or step: replicas, and at most autoscale.max of them
    autoscale = getattr(service, "autoscale", None)
    return max(int(getattr(service, "replicas", 1)), int(autoscale.max) if autoscale is not None else 0)


def _any(value: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, g) for g in globs)


def _host_matches(host: str, globs: Sequence[str]) -> bool:
    """A host against host globs where ``*`` and ``?`` stay inside one name label: ``gpu-*`` is
    ``gpu-1``, not ``gpu-1.attacker.example``, ``gpu-2:2222`` or ``root@gpu-3``."""
    for glob in globs:
        pattern = "".join("[^.:@/]*" if c == "*" else "[^.:@/]" if c == "?" else re.escape(c) for c in glob)
        if re.fullmatch(pattern, host):
            return True
    return False


def _secret_name(job: Job, ref: object) -> str:
    """What a secrets rule matches: the reference, with the namespace for a Kubernetes secret
    (``kubernetes:NAMESPACE/SECRET/KEY``), so a rule for one namespace allows no other."""
    text = str(ref)
    if text.startswith("kubernetes:"):
        return f"kubernetes:{job.kubernetes.namespace}/{text.removeprefix('kubernetes:')}"
    return text


# sbatch options a submission may set unless the team's slurm_options says otherwise: not those that
# pick who pays or what is reserved (reservation, wckey, licenses), reorder the queue (priority) or
# mail anyone (mail-user, mail-type)
SUBMITTED_SBATCH_OPTIONS = (
    "begin", "constraint", "cpus-per-gpu", "exclude", "exclusive", "gpus-per-node", "gpus-per-task", "hint",
    "mem-per-gpu", "nice", "nodelist", "ntasks-per-node", "requeue", "no-requeue", "signal", "switches",
    "threads-per-core", "tmp",
)  # fmt: skip


def place_refusals(where: str, team: Team, job: Job, submitted: bool) -> list[str]:
    """Who a job runs as and where: the connections, Slurm account and QoS, Kubernetes namespace,
    service account and tolerations, and the host paths its container mounts. For a submission an
    unset rule allows none of it; for a dags-folder spec an unset rule allows everything."""
    out: list[str] = []

    def check(what: str, value: str | None, globs: list[str] | None, rule: str, needed: bool = True) -> None:
        if value is None:
            return
        if globs is None:
            if submitted and needed:
                out.append(f"{where}: {what} {value}: the team has no {rule} rule, so a submission may not use it")
        elif not _any(value, globs):
            out.append(f"{where}: {what} {value} is not allowed (allowed: {', '.join(globs) or 'none'})")

    if "ssh" in job.target:
        check("ssh.connection", job.ssh.connection, team.connections, "connections")
    if "slurm" in job.target:
        check("slurm.connection", job.slurm.connection, team.connections, "connections")
        check("slurm.account", job.slurm.account, team.slurm_accounts, "slurm_accounts")
        check("slurm.qos", job.slurm.qos, team.slurm_qos, "slurm_qos")
        allowed = SUBMITTED_SBATCH_OPTIONS if team.slurm_options is None else tuple(team.slurm_options)
        for option in job.slurm.options:
            if option not in allowed and (submitted or team.slurm_options is not None):
                out.append(
                    f"{where}: slurm.options {option} is not an option the team's submissions may set "
                    f"(allowed: {', '.join(allowed) or 'none'}; the policy's slurm_options widens it)"
                )
    if "kubernetes" in job.target:
        k = job.kubernetes
        check("kubernetes.connection", k.connection, team.connections, "connections")
        check("kubernetes.namespace", k.namespace, team.kubernetes_namespaces, "kubernetes_namespaces")
        check("kubernetes.service_account", k.service_account, team.kubernetes_service_accounts,
              "kubernetes_service_accounts")  # fmt: skip
        check("kubernetes.checkpoint_claim", k.checkpoint_claim, team.kubernetes_claims, "kubernetes_claims")
        if k.tolerations and submitted and not team.kubernetes_tolerations:
            out.append(f"{where}: kubernetes.tolerations: the team may not tolerate taints (kubernetes_tolerations)")
    if job.image:
        for mount in job.container.mounts:
            check("container.mounts host path", mount.host, team.mount_paths, "mount_paths")
    return out


def static_refusals(name: str, team: Team, job: Job, *, submitted: bool = True) -> list[str]:
    """Every rule of ``team`` the job breaks (``name``: the team's name, for the messages)."""
    out: list[str] = []
    where = f"team {name}"
    if team.targets is not None:
        targets = [t for t in job.target if t not in team.targets]
        if targets:
            out.append(
                f"{where}: target {', '.join(targets)} is not allowed (allowed: {', '.join(team.targets) or 'none'})"
            )
    elif submitted and "local" in job.target:
        out.append(
            f"{where}: target local runs a submitted job on the Airflow worker itself, as its account; it is allowed "
            "only when the team's targets name it (targets: [local, ...])"
        )
    if team.slurm_partitions is not None and "slurm" in job.target:
        part = job.slurm.partition
        if part is None or not _any(part, team.slurm_partitions):
            out.append(
                f"{where}: slurm.partition {part or '(the cluster default)'} is not allowed "
                f"(allowed: {', '.join(team.slurm_partitions)}); set slurm.partition to one of them"
            )
    if team.ssh_hosts is not None and "ssh" in job.target:
        hosts = job.ssh.hosts
        bad = [h for h in hosts if not _host_matches(h, team.ssh_hosts)]
        if not hosts:
            out.append(f"{where}: ssh.hosts must list the hosts (allowed: {', '.join(team.ssh_hosts)})")
        elif bad:
            out.append(f"{where}: ssh host {', '.join(bad)} is not allowed (allowed: {', '.join(team.ssh_hosts)})")
    if team.images is not None:
        if not job.image:
            out.append(
                f"{where}: jobs run in an approved image; set image: to one starting with {' or '.join(team.images)}"
            )
        elif not any(job.image.startswith(p) for p in team.images):
            out.append(f"{where}: image {job.image} is not allowed (allowed prefixes: {', '.join(team.images)})")
    gpus = gpus_of(job)
    if team.max_gpus is not None and gpus > team.max_gpus:
        out.append(f"{where}: at most {team.max_gpus} GPUs per job; this job asks {gpus}")
    if team.max_timeout is not None:
        if job.timeout is None:
            out.append(f"{where}: jobs need a timeout of at most {_h(team.max_timeout)}; add timeout:")
        elif job.timeout > team.max_timeout:
            out.append(f"{where}: timeout {_h(job.timeout)} is longer than the team's {_h(team.max_timeout)}")
    if team.gpu_hours is not None and gpus and job.timeout is None:
        out.append(f"{where}: a GPU job needs a timeout (the team has a GPU-hour budget); add timeout:")
    if team.secrets is None and submitted:
        asked = [f"secrets.{key}: {ref}" for key, ref in job.secrets.items()]
        if job.image and job.container.registry_connection:
            asked.append(f"container.registry_connection {job.container.registry_connection}")
        if job.code is not None and job.code.connection:
            asked.append(f"code.connection {job.code.connection}")
        if asked:
            out.append(
                f"{where}: {'; '.join(asked)}: the team has no secrets rule, so a submission may use none; "
                "the platform team lists what it may use (secrets: ['variable:hf_*', 'connection:wandb'])"
            )
    if team.secrets is not None:
        for key, ref in job.secrets.items():
            if not _any(_secret_name(job, ref), team.secrets):
                out.append(
                    f"{where}: secrets.{key}: {ref} is not a reference the team may use "
                    f"(allowed: {', '.join(team.secrets) or 'none'})"
                )
        registry = job.container.registry_connection
        if job.image and registry and not _any(f"connection:{registry}", team.secrets):
            out.append(
                f"{where}: container.registry_connection {registry} is not a connection the team may use "
                f"(allowed: {', '.join(team.secrets) or 'none'})"
            )
        # its token goes to the repository the spec names: a secret like any other
        token = job.code.connection if job.code is not None else None
        if token and not _any(f"connection:{token}", team.secrets):
            out.append(
                f"{where}: code.connection {token} is not a connection the team may use "
                f"(allowed: {', '.join(team.secrets) or 'none'})"
            )
    if job.gpu_pool and submitted:
        # a submitted job is a map index of the run task, whose pool Airflow fixes when the DAG is parsed
        out.append(
            f"{where}: gpu_pool {job.gpu_pool}: a submitted job cannot hold Airflow pool slots (a mapped task's "
            "pool is fixed when the DAG is parsed); drop gpu_pool: the target still refuses GPUs that are taken "
            "(the runner's claims on a host, Slurm's GRES, Kubernetes' allocatable) and max_gpus bounds the job"
        )
    if job.is_service and not team.services and submitted:
        out.append(f"{where}: may not deploy services by submission (services: false in the policy)")
    elif job.is_service and submitted and not job.name.startswith(f"{name}-"):
        # one name is one service on every target (its state, its replicas): a team owns the names
        # that begin with its own, so no submission replaces or scales another team's service
        out.append(
            f"{where}: a submitted service is named after its team: call it {name}-{job.name} "
            f"(the team owns the service names that begin with '{name}-')"
        )
    return out + place_refusals(where, team, job, submitted)


def budget_refusal(name: str, team: Team, jobs: Sequence[Job], used: float) -> str | None:
    """The budget rule: GPU-hours used this period + what the jobs may use at most (GPUs × timeout)."""
    budget = team.gpu_hours
    if budget is None:
        return None
    asked = sum(gpus_of(j) * hours(j.timeout) * tries_of(j) for j in jobs)
    if used + asked <= budget.limit + 1e-9:
        return None
    period = "today" if budget.per == "day" else "this week"
    ask = " + ".join(
        f"{gpus_of(j)} GPUs × {_h(j.timeout)}" + (f" × {tries_of(j)} runs" if tries_of(j) > 1 else "")
        for j in jobs
        if gpus_of(j)
    )
    return (
        f"team {name}: {used:.2f} of {budget.limit:g} GPU-hours used {period}; this submission asks up to "
        f"{ask} = {asked:.2f} GPU-hours"
    )


def concurrency_refusal(name: str, team: Team, live: int) -> str | None:
    if team.max_concurrent is None or live < team.max_concurrent:
        return None
    return f"team {name}: {live} of {team.max_concurrent} concurrent runs are live; wait for one to end"


def _h(duration: object) -> str:
    from datetime import timedelta

    from flexorch_provider.spec.units import format_duration

    return format_duration(duration) if isinstance(duration, timedelta) else str(duration)


def policy_problems(policy: Policy, spec: SpecModel, shown: str, text: str | None = None) -> list[SpecProblem]:
    """The team rules a dags-folder spec breaks; its team is the one its ``owner`` names (else the
    default team). Budgets and concurrency limits apply to submissions only. ``text``, the spec's
    own, puts the owner's line in the message."""
    team = policy.teams.get(spec.owner)
    name = spec.owner
    if team is None and policy.default_team is not None:
        name, team = policy.default_team, policy.teams[policy.default_team]
    if team is None:
        line, unset = _owner_line(text)
        return [
            SpecProblem(
                shown,
                line,
                "owner",
                f"{spec.owner!r}{' (not set: the default owner)' if unset else ''} is not a team of {policy.file} "
                f"and it has no default_team; set owner to one of {', '.join(policy.teams) or '(no teams)'}",
            )
        ]
    jobs = spec.effective_steps() if isinstance(spec, PipelineSpec) else [spec]
    return [
        SpecProblem(shown, None, "policy", r) for job in jobs for r in static_refusals(name, team, job, submitted=False)
    ]


def _owner_line(text: str | None) -> tuple[int | None, bool]:
    """The line of the spec's ``owner`` (or of its first line when it sets none) and whether it is unset."""
    if text is None:
        return None, False
    from flexorch_provider.spec.loader import parse_yaml

    try:
        _, lines = parse_yaml(text)
    except Exception:
        return None, False
    line = lines.get(("owner",))
    return (line, False) if line is not None else (lines.get(()), True)
