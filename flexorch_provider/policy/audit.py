"""``flexorch policy audit``: which rules of a policy leave submissions open, team by team.

A submitted spec is untrusted input, and the policy is what stands in for an approval. The audit
lists what a user of each team could do that no rule bounds (a rule left unset that, for
submissions, allows everything it covers), and the globs that allow more than they look like
(``*``). Rules that deny by default when unset (local, secrets, connections, accounts,
namespaces, mounts) are listed as closed. ``--strict`` exits 1 when anything is open.
"""

from __future__ import annotations

from dataclasses import dataclass

from flexorch_provider.policy.model import Policy, Team


@dataclass(frozen=True)
class Finding:
    team: str
    rule: str
    text: str


def audit(policy: Policy) -> list[Finding]:
    """What each team may do by submission with nothing to bound it."""
    out: list[Finding] = []
    if policy.default_team is not None:
        out.append(
            Finding(
                policy.default_team,
                "default_team",
                f"every Airflow user in no team submits as team {policy.default_team}: name the members instead",
            )
        )
    for name, team in policy.teams.items():
        out += [Finding(name, rule, text) for rule, text in _open(team)]
    return out


def _open(team: Team) -> list[tuple[str, str]]:
    targets = set(team.targets) if team.targets is not None else {"ssh", "slurm", "kubernetes"}
    out: list[tuple[str, str]] = []
    if team.targets is None:
        out.append(("targets", "any target but local; name the targets the team may use"))
    if team.max_gpus is None:
        out.append(("max_gpus", "a job may ask for any number of GPUs"))
    if team.max_timeout is None:
        out.append(("max_timeout", "a job may run without a time limit"))
    if team.gpu_hours is None:
        out.append(("gpu_hours", "no GPU-hour budget"))
    if team.max_concurrent is None:
        out.append(("max_concurrent", "any number of runs at once"))
    if "slurm" in targets and team.slurm_partitions is None:
        out.append(("slurm_partitions", "any Slurm partition"))
    if "ssh" in targets and team.ssh_hosts is None:
        out.append(("ssh_hosts", "any host the team's connections reach"))
    if team.images is None:
        out.append(("images", "any image, or none (the job runs on the host itself)"))
    if team.services:
        out.append(("services", "may deploy long-running services"))
    for rule in (
        "secrets",
        "connections",
        "ssh_hosts",
        "slurm_partitions",
        "slurm_accounts",
        "slurm_qos",
        "kubernetes_namespaces",
        "kubernetes_service_accounts",
        "kubernetes_claims",
        "mount_paths",
    ):
        for glob in getattr(team, rule) or []:
            if glob.strip("*") == "" or glob.endswith(":*"):
                out.append((rule, f"{glob!r} allows every {rule.replace('_', ' ').removesuffix('s')} of its kind"))
    if team.kubernetes_tolerations:
        out.append(("kubernetes_tolerations", "may schedule on tainted nodes"))
    return out


def report(policy: Policy) -> list[str]:
    """The audit as lines: ``team nlp: max_gpus: a job may ask for any number of GPUs``."""
    findings = audit(policy)
    lines = [f"team {f.team}: {f.rule}: {f.text}" for f in findings]
    closed = (
        "local, secrets, connections, Slurm accounts and QoS, Kubernetes namespaces and service "
        "accounts, tolerations and host mounts: closed to submissions unless a rule names them"
    )
    return [*lines, f"{len(findings)} open rule(s) in {policy.file}; {closed}"]
