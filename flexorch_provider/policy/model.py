"""The team policy file, ``flexorch_policy.yaml`` beside the specs: who may run what, where, and
how much, so a submission needs no approval ticket::

    teams:
      nlp:
        members: [alice, bob]              # Airflow user names
        targets: [slurm, local]            # unset: every target
        slurm_partitions: [gpu]
        ssh_hosts: ["gpu-*"]               # globs over ssh.hosts entries
        images: [ghcr.io/acme/]            # prefixes; set: every job needs a matching image
        max_gpus: 8                        # per job (GPUs per node × nodes)
        max_timeout: 6h                    # set: every job needs a timeout no longer than this
        gpu_hours: {limit: 64, per: day}   # GPUs × wall time, running jobs included
        max_concurrent: 4                  # submitted runs live at once
        secrets: ["variable:hf_*", "connection:wandb"]   # references the team may use
                                           # (kubernetes: "kubernetes:NAMESPACE/SECRET/KEY")
        services: false                    # may a submission deploy a service
        connections: [nlp_fleet, nlp_slurm]  # Airflow connections its jobs run through
        slurm_accounts: [nlp]              # and qos: slurm_qos
        slurm_options: [constraint, reservation]  # sbatch options (unset: the usual ones)
        kubernetes_namespaces: [nlp]       # and service accounts, tolerations: true
        mount_paths: ["/data/nlp/*"]       # host paths a container may mount
        airflow_roles: [nlp-users]         # auth-manager roles granted flexorch-submit-nlp
    default_team: null                     # users in no team (and specs whose owner is no team)

Each team submits through its own DAG, ``flexorch-submit-<team>`` (its runs, logs and XComs are
the team's: an auth manager with per-DAG permissions, such as FAB's, lets only the team's roles read
or change them; ``airflow_roles`` grants them through the DAG's ``access_control``).

No policy file: specs in the dags folder run as without this feature, and every submission is
refused (a submitted spec is untrusted input; the platform team says what it may do). For
submissions, a team without ``targets`` may not use ``local`` and one without ``secrets`` may use
no secret: both only when a rule names them.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from flexorch_provider.exceptions import SpecError, SpecProblem
from flexorch_provider.spec.fields import Duration, FlexModel, Name
from flexorch_provider.spec.targets import SLURM_ALLOWED_OPTIONS
from flexorch_provider.spec.workload import TargetName

FILE_NAME = "flexorch_policy.yaml"
POLICY_ENV = "FLEXORCH_POLICY"

Glob = Annotated[str, Field(min_length=1, max_length=250)]
SbatchOption = Literal[SLURM_ALLOWED_OPTIONS]  # type: ignore[valid-type]
RoleName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$")]


class Budget(FlexModel):
    """GPU-hours a team may use per calendar day or ISO week (UTC)."""

    limit: Annotated[
        float, Field(strict=True, gt=0, allow_inf_nan=False, description="GPU-hours (GPUs × wall time) in each period.")
    ]
    per: Annotated[Literal["day", "week"], Field(description="day (UTC midnight) or week (Monday, UTC).")] = "day"


class Team(FlexModel):
    """One team's rules; an unset rule allows everything it covers."""

    members: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=250)]], Field(description="Airflow user names in the team.")
    ] = Field(default_factory=list)
    targets: Annotated[list[TargetName] | None, Field(description="Targets the team may use.")] = None
    slurm_partitions: Annotated[
        list[Glob] | None, Field(description="Slurm partitions (globs); set: a job must name one in slurm.partition.")
    ] = None
    ssh_hosts: Annotated[
        list[Glob] | None,
        Field(
            description="ssh hosts (globs over ssh.hosts entries, user@ and :port included); set: a job must list its hosts."
        ),
    ] = None
    images: Annotated[
        list[Glob] | None, Field(description="Image prefixes; set: every job needs an image starting with one of them.")
    ] = None
    max_gpus: Annotated[int | None, Field(strict=True, ge=0, description="GPUs per job (per node × nodes).")] = None
    max_timeout: Annotated[Duration | None, Field(description="Longest timeout; set: every job needs a timeout.")] = (
        None
    )
    gpu_hours: Annotated[Budget | None, Field(description="GPU-hour budget per day or week.")] = None
    max_concurrent: Annotated[int | None, Field(strict=True, ge=1, description="Submitted runs live at once.")] = None
    secrets: Annotated[
        list[Glob] | None,
        Field(description="Secret references the team may use (globs like 'variable:hf_*', 'connection:wandb')."),
    ] = None
    services: Annotated[bool, Field(strict=True, description="May a submission deploy a service.")] = False
    # who a job runs as, and where: for submissions, an unset rule allows none of what it covers
    connections: Annotated[
        list[Glob] | None,
        Field(
            description="Airflow connections a job may run through (ssh.connection, slurm.connection, "
            "kubernetes.connection; globs). Unset: a submission may use none (Slurm: the local sbatch only)."
        ),
    ] = None
    slurm_accounts: Annotated[
        list[Glob] | None, Field(description="Slurm accounts (globs). Unset: a submission may not set slurm.account.")
    ] = None
    slurm_qos: Annotated[
        list[Glob] | None, Field(description="Slurm QoS (globs). Unset: a submission may not set slurm.qos.")
    ] = None
    slurm_options: Annotated[
        list[SbatchOption] | None,
        Field(
            description="slurm.options names the team's jobs may set. Unset: a submission may set the usual ones "
            "(not reservation, wckey, licenses, priority, mail-user, mail-type)."
        ),
    ] = None
    kubernetes_namespaces: Annotated[
        list[Glob] | None,
        Field(description="Kubernetes namespaces (globs). Unset: a submission may not use the kubernetes target."),
    ] = None
    kubernetes_service_accounts: Annotated[
        list[Glob] | None,
        Field(description="Kubernetes service accounts (globs). Unset: a submission may not set service_account."),
    ] = None
    kubernetes_claims: Annotated[
        list[Glob] | None,
        Field(
            description="PersistentVolumeClaims a job may keep its checkpoints on (globs over "
            "kubernetes.checkpoint_claim). Unset: a submission may not name one."
        ),
    ] = None
    kubernetes_tolerations: Annotated[
        bool, Field(strict=True, description="May a submission set kubernetes.tolerations (tainted nodes).")
    ] = False
    mount_paths: Annotated[
        list[Glob] | None,
        Field(
            description="Host paths a container may mount (globs over container.mounts[].host). "
            "Unset: a submission may mount none."
        ),
    ] = None
    airflow_roles: Annotated[
        list[RoleName] | None,
        Field(
            description="Auth-manager roles that may read and run the team's submit DAG (flexorch-submit-TEAM), "
            "set as its access_control (FAB: the roles must exist before the DAG is parsed)."
        ),
    ] = None


class Policy(FlexModel):
    """The whole file."""

    teams: Annotated[dict[Name, Team], Field(description="Teams by name.")] = Field(default_factory=dict)
    default_team: Annotated[
        Name | None,
        Field(description="The team of users in no team (and of specs whose owner is no team); null: refused."),
    ] = None
    file: Annotated[str, Field(exclude=True, description="Where it was read from (set by the loader).")] = ""

    @model_validator(mode="after")
    def _check(self) -> Policy:
        if self.default_team is not None and self.default_team not in self.teams:
            raise ValueError(f"default_team: {self.default_team!r} is not one of the teams ({', '.join(self.teams)})")
        seen: dict[str, str] = {}
        for name, team in self.teams.items():
            for user in team.members:
                if user in seen:
                    raise ValueError(
                        f"teams.{name}.members: {user!r} is already in team {seen[user]!r}; a user belongs to one team"
                    )
                seen[user] = name
        return self

    def team_of(self, user: str | None) -> tuple[str, Team] | None:
        """The user's team (by membership, else the default team), or None."""
        for name, team in self.teams.items():
            if user is not None and user in team.members:
                return name, team
        if self.default_team is not None:
            return self.default_team, self.teams[self.default_team]
        return None


def policy_file(specs_dir: str | Path | None) -> Path | None:
    """``$FLEXORCH_POLICY``, else ``flexorch_policy.yaml`` in the specs folder (None without a folder)."""
    if os.environ.get(POLICY_ENV):
        return Path(os.environ[POLICY_ENV])
    return Path(specs_dir) / FILE_NAME if specs_dir is not None else None


def load_policy(path: str | Path | None) -> Policy | None:
    """The policy at ``path``; None when there is no such file (dags-folder specs are then checked
    against nothing, and every submission is refused). A file that is not valid is a SpecError
    with file, line and field: an invalid policy never means "allow all"."""
    from flexorch_provider.spec.loader import parse_yaml, validation_problems

    if path is None:
        return None
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(SpecProblem(str(file), None, "", f"cannot read the policy: {e}")) from None
    data, lines = parse_yaml(text, str(file))
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        raise SpecError(validation_problems(e, data, str(file), lines, root=Policy)) from None
    policy.file = str(file)
    return policy


def hours(duration: timedelta | None) -> float:
    return duration.total_seconds() / 3600 if duration is not None else 0.0
