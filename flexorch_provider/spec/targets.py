"""Per-target sections of a spec: ``slurm``, ``kubernetes``, ``ssh``, ``local``."""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from flexorch_provider.spec.fields import (
    DNS_SUBDOMAIN_RE,
    LABEL_NAME_RE,
    ConnId,
    FlexModel,
    Name,
    Text,
)

# --- per-target sections ---------------------------------------------------------------
SLURM_ALLOWED_OPTIONS = (
    "begin", "constraint", "cpus-per-gpu", "exclude", "exclusive", "gpus-per-node",
    "gpus-per-task", "hint", "licenses", "mail-type", "mail-user", "mem-per-gpu", "nice",
    "nodelist", "ntasks-per-node", "priority", "requeue", "no-requeue", "reservation",
    "signal", "switches", "threads-per-core", "tmp", "wckey",
)  # fmt: skip
# Options flexorch sets itself (job name, output, environment...) are not allowed here.
SBATCH_VALUE_RE = re.compile(r"^(?!-)[A-Za-z0-9_.,:=@+/%&|\[\]*-]{1,200}$")


class SlurmOptions(FlexModel):
    """Settings for the ``slurm`` target."""

    connection: Annotated[
        ConnId | None,
        Field(description="SSH connection to a login node; omit to call the local sbatch (Airflow on a login node)."),
    ] = None
    partition: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="Partition (queue).")] = None
    account: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="Account to charge.")] = None
    qos: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="Quality of service.")] = None
    container: Annotated[
        Literal["podman", "apptainer", "pyxis"],
        Field(
            description="How a job with `image` runs on the cluster: podman on the node (default), apptainer exec "
            "docker://IMAGE, or pyxis (srun --container-image)."
        ),
    ] = "podman"
    options: Annotated[
        dict[str, str | int | bool],
        Field(
            description="Extra sbatch options (without '--'), from an allow-list: " + ", ".join(SLURM_ALLOWED_OPTIONS)
        ),
    ] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _allowed(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, val in value.items():
            opt = key.removeprefix("--")
            if opt not in SLURM_ALLOWED_OPTIONS:
                hint = difflib.get_close_matches(opt, SLURM_ALLOWED_OPTIONS, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ValueError(
                    f"sbatch option {key!r} is not allowed here{extra} (flexorch sets job name, output, "
                    f"resources and environment itself; allowed: {', '.join(SLURM_ALLOWED_OPTIONS)})"
                )
            if isinstance(val, str) and not SBATCH_VALUE_RE.match(val):
                raise ValueError(
                    f"sbatch option {key!r} must be one word ({val!r}): sbatch reads every word of an #SBATCH line, so "
                    "a space would add options; letters, digits and _ . , : = @ + / % & | [ ] * - only, not starting with -"
                )
        return {k.removeprefix("--"): v for k, v in value.items()}


class Toleration(FlexModel):
    """A Kubernetes toleration."""

    key: Annotated[str | None, Field(description="Taint key; omit with operator Exists to tolerate all.")] = None
    operator: Annotated[Literal["Exists", "Equal"], Field(description="Exists or Equal.")] = "Equal"
    value: Annotated[str | None, Field(description="Taint value (operator Equal).")] = None
    effect: Annotated[
        Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None, Field(description="Taint effect.")
    ] = None
    toleration_seconds: Annotated[
        int | None, Field(strict=True, ge=0, le=10**9, description="For NoExecute: how long to stay.")
    ] = None


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    for key, val in value.items():
        prefix, _, name = key.rpartition("/")
        if (
            (prefix and not DNS_SUBDOMAIN_RE.match(prefix))
            or not name
            or len(name) > 63
            or not LABEL_NAME_RE.match(name)
        ):
            raise ValueError(f"{key!r} is not a valid Kubernetes label key (e.g. 'team' or 'example.com/team')")
        if len(val) > 63 or not LABEL_NAME_RE.match(val):
            raise ValueError(f"label value {val!r} for {key!r} is not valid: ≤ 63 of [A-Za-z0-9-_.], alphanumeric ends")
    return value


class KubernetesOptions(FlexModel):
    """Settings for the ``kubernetes`` target."""

    connection: Annotated[ConnId, Field(description="Airflow Kubernetes connection id.")] = "kubernetes_default"
    namespace: Annotated[Name, Field(description="Namespace to run in.")] = "default"
    node_selector: Annotated[dict[str, Text], Field(description="Node labels the pods must match.")] = Field(
        default_factory=dict
    )
    tolerations: Annotated[list[Toleration], Field(description="Tolerations for tainted (e.g. GPU) nodes.")] = Field(
        default_factory=list
    )
    service_account: Annotated[Name | None, Field(description="Service account for the pods.")] = None
    labels: Annotated[dict[str, str], Field(description="Extra labels on every object flexorch creates.")] = Field(
        default_factory=dict
    )
    gpu_label: Annotated[
        str, Field(description="Node label holding the GPU model, used when a GPU type is requested.")
    ] = "nvidia.com/gpu.product"
    checkpoint_claim: Annotated[
        Name | None,
        Field(
            description="A PersistentVolumeClaim in the namespace that holds checkpoint_dir: mounted at "
            "checkpoint_dir/<run key> (its folder <run key>), so every pod of the run, a recovered one too, finds "
            "the same files. ReadWriteMany for multi-node jobs."
        ),
    ] = None
    git_image: Annotated[
        Text,
        Field(description="With code.git: the image of the init container that fetches the code (needs sh and git)."),
    ] = "alpine/git"

    _labels = field_validator("labels", "node_selector")(_check_labels)


HOST_ENTRY_RE = re.compile(
    r"^(?:(?P<user>[A-Za-z_][A-Za-z0-9_.-]{0,31})@)?"
    r"(?:(?P<host>[A-Za-z0-9][A-Za-z0-9_.-]{0,252})|\[(?P<ipv6>[0-9A-Fa-f:]+)\])"
    r"(?::(?P<port>\d{1,5}))?$"
)


def host_entry(value: Any) -> Any:
    if isinstance(value, str):
        m = HOST_ENTRY_RE.match(value)
        if not m or (m.group("port") and not 0 < int(m.group("port")) < 65536):
            raise ValueError(
                f"{value!r} is not a host; write 'host', 'host:port', 'user@host:port' or '[2001:db8::5]:2222'"
            )
    return value


def unique_hosts(value: Any) -> Any:
    if isinstance(value, list):
        dupes = sorted({h for h in value if isinstance(h, str) and value.count(h) > 1})
        if dupes:
            raise ValueError(f"hosts: {', '.join(dupes)} listed more than once")
    return value


class SshOptions(FlexModel):
    """Settings for the ``ssh`` target."""

    connection: Annotated[ConnId, Field(description="Airflow SSH connection (user, key, default host).")] = (
        "ssh_default"
    )
    hosts: Annotated[
        list[Annotated[str, BeforeValidator(host_entry)]],
        BeforeValidator(unique_hosts),
        Field(
            description="Hosts of the fleet ('host', 'host:port' or 'user@host:port'); empty means the connection's "
            "host. The connection gives the user, key and port unless an entry names its own."
        ),
    ] = Field(default_factory=list)
    placement: Annotated[
        Literal["any", "all"],
        Field(description="any: the first reachable host that fits; all: the same job on every host."),
    ] = "any"


class LocalOptions(FlexModel):
    """Settings for the ``local`` target (the Airflow worker itself)."""

    run_dir: Annotated[
        Text | None,
        Field(
            description="Where per-run directories (pid, log, exit code) go; default $FLEXORCH_RUN_DIR or ~/.flexorch/runs."
        ),
    ] = None
    defer: Annotated[
        bool | None,
        Field(
            strict=True,
            description="Follow the job from the triggerer (true) or from the worker that started it (false). "
            "Default: from the triggerer only when Airflow runs every task on one machine (LocalExecutor): a "
            "triggerer on another machine cannot see a local job.",
        ),
    ] = None
