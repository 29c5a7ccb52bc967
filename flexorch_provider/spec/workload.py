"""The fields every workload has: what to run, where, and with which resources.

Every kind of spec and every pipeline step is a :class:`Workload`; a pipeline's own workload
fields are the defaults of its steps (:mod:`flexorch_provider.spec.models`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from flexorch_provider.capabilities import ONE_MACHINE_TARGETS, SERVICE_TARGETS, TARGETS
from flexorch_provider.runner.containers import STEERING_NAMES, STEERING_PREFIXES
from flexorch_provider.spec.code import CodeField
from flexorch_provider.spec.container import ContainerOptions, check_image
from flexorch_provider.spec.fields import (
    ENV_NAME_RE,
    Duration,
    FlexModel,
    Name,
    OrShorthand,
    Resources,
    Retries,
    Secret,
    SecretRef,
    Text,
    Timeout,
    retries_shorthand,
    scalar_to_str,
)
from flexorch_provider.spec.service import ServiceFields
from flexorch_provider.spec.targets import KubernetesOptions, LocalOptions, SlurmOptions, SshOptions

# which GPUs a job sees: set from resources.gpus on every target, never by the spec
GPU_ENV = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "ROCR_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
    }
)


def _targets(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        seen = []
        for item in value:
            if item in seen:
                raise ValueError(f"target {item!r} is listed twice")
            seen.append(item)
        if not value:
            raise ValueError(f"target must name at least one of {', '.join(TARGETS)}")
    return value


TargetName = Literal["kubernetes", "ssh", "slurm", "local"]


class WarnBefore(FlexModel):
    """A signal to the job's processes ahead of its timeout."""

    signal: Annotated[Literal["USR1", "USR2", "INT", "TERM", "HUP"], Field(description="The signal's name.")] = "USR1"
    before: Annotated[Duration, Field(description="How long before the timeout, e.g. '2m'.")] = timedelta(minutes=2)


class Workload(FlexModel):
    """Fields every workload has: what to run, where, and with which resources."""

    target: Annotated[
        list[TargetName],
        BeforeValidator(_targets),
        OrShorthand({"enum": list(TARGETS)}),
        Field(description="Where to run: kubernetes, ssh, slurm or local, or an ordered list (see target_policy)."),
    ] = Field(default_factory=lambda: list[TargetName](["local"]))
    target_policy: Annotated[
        Literal["first-accepts", "first-free"],
        Field(
            description="How an ordered target list is used. first-accepts: the first target that takes the job "
            "(a scheduler that queues it takes it). first-free: the first target whose GPUs fit the request now "
            "(Slurm partition GRES, Kubernetes allocatable, the ssh hosts' free GPUs); if none fits, first-accepts."
        ),
    ] = "first-accepts"
    max_pending: Annotated[
        Duration | None,
        Field(
            description="A job still pending this long (Slurm PENDING, pod Unschedulable) is cancelled there and "
            "submitted to the next target in the list that has room, within the same try; a job that has started "
            "never moves. Needs two or more targets."
        ),
    ] = None
    image: Annotated[
        Text | None,
        Field(
            description="Container image: the job runs in it on every target (required for kubernetes; on local and "
            "ssh through podman or docker, see `container`)."
        ),
    ] = None
    container: Annotated[
        ContainerOptions,
        Field(
            description="How `image` runs: runtime (local, ssh), pull policy, host mounts, a private registry's login."
        ),
    ] = Field(default_factory=ContainerOptions)
    setup: Annotated[Text | None, Field(description="Shell script run before `run` (e.g. pip install).")] = None
    code: CodeField = None
    checkpoint_dir: Annotated[
        Text | None,
        Field(
            description="A folder on the target that outlives each try and each recovery (absolute, or relative to "
            "the account's home): the job finds FLEXORCH_CHECKPOINT_DIR=<it>/<run key>, made before it starts. A job "
            "that may move to another ssh host needs it on storage every host mounts; on kubernetes it is "
            "kubernetes.checkpoint_claim mounted there (the run key's folder of the claim)."
        ),
    ] = None
    warn_before: Annotated[
        WarnBefore | None,
        Field(
            description="A signal to every process of the job that handles it (one that would die of it, e.g. a "
            "launcher, is left alone) ahead of its end, so it can save first: {signal: USR1, "
            "before: 2m}: `before` ahead of its timeout, and `before` ahead of the SIGTERM of a cancel (ssh, local: "
            "the job runner, in an image too; slurm: --signal and the batch shell, not in an image; kubernetes: a "
            "preStop hook, also "
            "ahead of an eviction or preemption). Every node of a multi-node job gets it."
        ),
    ] = None
    workdir: Annotated[
        Text | None,
        Field(
            description="Working directory of the job (relative paths: from the account's home; with `code`, from "
            "the job's copy of its code, where it starts by default). It must exist "
            "on the host: a missing one fails the job naming it (it is not created)."
        ),
    ] = None
    env: Annotated[
        dict[
            str, Annotated[Text, BeforeValidator(scalar_to_str), OrShorthand({"type": "number"}, {"type": "boolean"})]
        ],
        Field(description="Environment variables (Airflow templates allowed in values)."),
    ] = Field(default_factory=dict)
    secrets: Annotated[
        dict[str, Secret],
        Field(
            description="Environment variables filled at run time from Airflow Variables/Connections or Kubernetes secrets."
        ),
    ] = Field(default_factory=dict)
    timeout: Annotated[
        Timeout | None, Field(description="Kill the job after this long: '6h', '30m' (leave it out for no limit).")
    ] = None
    retries: Annotated[
        Retries,
        BeforeValidator(retries_shorthand),
        OrShorthand({"type": "integer", "minimum": 0}),
        Field(description="Retry policy."),
    ] = Field(default_factory=Retries)
    resources: Annotated[Resources, Field(description="CPUs, memory, GPUs, nodes.")] = Field(default_factory=Resources)
    gpu_pool: Annotated[
        Name | None,
        Field(
            description="A GPU pool from gpu_pools.yaml: the task takes one slot of the Airflow pool gpu-<name> per "
            "GPU it requests (flexorch pools sync sizes it)."
        ),
    ] = None
    slurm: Annotated[SlurmOptions, Field(description="Settings for the slurm target.")] = Field(
        default_factory=SlurmOptions
    )
    kubernetes: Annotated[KubernetesOptions, Field(description="Settings for the kubernetes target.")] = Field(
        default_factory=KubernetesOptions
    )
    ssh: Annotated[SshOptions, Field(description="Settings for the ssh target.")] = Field(default_factory=SshOptions)
    local: Annotated[LocalOptions, Field(description="Settings for the local target.")] = Field(
        default_factory=LocalOptions
    )

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return None if value is None else check_image(value)

    @field_validator("env", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not ENV_NAME_RE.match(key):
                raise ValueError(
                    f"{key!r} is not a valid environment variable name (letters, digits, '_'; not starting with a digit)"
                )
            if key in GPU_ENV:
                raise ValueError(
                    f"{key} is set by flexorch from resources.gpus (a job that asks for none sees no GPU); "
                    "ask for GPUs there instead"
                )
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in STEERING_NAMES or key.startswith(STEERING_PREFIXES):  # what the runner keeps from a runtime
                raise ValueError(
                    f"secret {key}: a secret may not have the name of a variable that steers a container runtime or "
                    "the dynamic loader (LD_*, DOCKER_*, CONTAINERS_*, proxies...); pick another name"
                )
        return value

    @property
    def airflow_secrets(self) -> dict[str, SecretRef]:
        """The secret references Airflow resolves (variables, connections), by env name."""
        return {name: ref for name, ref in self.secrets.items() if ref.read_by_airflow}

    def check_workload(self) -> None:
        """Rules across fields, run on the workload as it will run (a step with the pipeline's
        fields filled in, a spec after overrides). Messages start with the field they are about."""
        if isinstance(self, ServiceFields):
            cannot = [t for t in self.target if t not in SERVICE_TARGETS]
            if cannot:
                raise ValueError(
                    f"target: {' and '.join(cannot)} cannot run services; a service runs on "
                    f"{', '.join(SERVICE_TARGETS)}: pick those, or make this a batch job"
                )
            a = self.autoscale
            if a is not None and "kubernetes" in self.target and a.metric.source != "prometheus":
                raise ValueError(
                    f"autoscale.metric.source: {a.metric.source} is read on each replica's host, which a kubernetes "
                    "service does not have; use source: prometheus (a query over the pods' metrics)"
                )
        if self.code is not None and self.code.git is None and "kubernetes" in self.target:
            raise ValueError(
                "code: the kubernetes target takes code from git only (code.git: each pod fetches it), not a folder "
                "(its pods cannot read the worker's): use code.git, put the code into the image, or run on ssh, "
                "slurm or local"
            )
        if "kubernetes" in self.target and self.checkpoint_dir is not None:
            if self.kubernetes.checkpoint_claim is None:
                raise ValueError(
                    "checkpoint_dir: on the kubernetes target it lives on a PersistentVolumeClaim: add "
                    "kubernetes.checkpoint_claim: <the claim's name in the namespace> (ReadWriteMany for nodes > 1), "
                    "or drop kubernetes from target"
                )
            if not str(self.checkpoint_dir).startswith("/"):
                raise ValueError(
                    f"checkpoint_dir: {self.checkpoint_dir!r} must be an absolute path on the kubernetes target (where "
                    "the claim is mounted in the pod), e.g. /checkpoints"
                )
        if self.kubernetes.checkpoint_claim is not None and self.checkpoint_dir is None:
            raise ValueError("kubernetes.checkpoint_claim: set checkpoint_dir too (where the claim is mounted)")
        if self.warn_before is not None:
            if self.timeout is not None and self.warn_before.before >= self.timeout:
                raise ValueError(
                    f"warn_before.before: {int(self.warn_before.before.total_seconds())}s must be shorter than "
                    f"timeout ({int(self.timeout.total_seconds())}s)"
                )
            if self.image and "slurm" in self.target:
                raise ValueError(
                    "warn_before: not yet for a job in an image on the slurm target (Slurm's signal would reach "
                    "the container runtime, not the job): drop slurm from target, run it outside an image there, "
                    "or handle SIGTERM"
                )
        if self.resources.shm is not None and not self.image:
            raise ValueError(
                "resources.shm: it sizes the /dev/shm of a job's container, so it needs image (a job outside an image "
                "uses its host's /dev/shm)"
            )
        nodes = self.resources.nodes
        one_machine = [t for t in self.target if t in ONE_MACHINE_TARGETS]
        if nodes > 1 and one_machine:
            raise ValueError(
                f"resources.nodes: {nodes} nodes need a target that starts one task per node "
                f"(slurm, kubernetes, ssh); {' and '.join(one_machine)} starts a job on one machine: drop "
                f"{' and '.join(one_machine)} from target, or ask for nodes: 1"
            )
        if nodes > 1 and "ssh" in self.target:
            if self.ssh.placement == "all":
                raise ValueError(
                    f"resources.nodes: {nodes} starts one group on {nodes} of the ssh hosts, while ssh.placement: all "
                    "starts an independent copy on every host: remove placement: all, or ask for nodes: 1"
                )
            if len(self.ssh.hosts) < nodes:
                raise ValueError(
                    f"resources.nodes: {nodes} nodes on the ssh target need at least {nodes} hosts in ssh.hosts "
                    f"(one node per host); it lists {len(self.ssh.hosts)}: add hosts, or ask for fewer nodes"
                )
        if self.max_pending is not None and len(self.target) < 2:
            raise ValueError(
                f"max_pending: a job moves to the next target after max_pending, but target lists only "
                f"{self.target[0]}; add a second target (e.g. target: [{self.target[0]}, ssh]) or remove max_pending"
            )
        if self.max_pending is not None and self.max_pending.total_seconds() < 1:
            raise ValueError("max_pending: must be at least 1s (e.g. 10m)")
        if isinstance(self, ServiceFields) and (self.max_pending is not None or self.target_policy != "first-accepts"):
            raise ValueError(
                "max_pending: a service runs on the first target that accepts it; target_policy first-free and "
                "max_pending apply to jobs (batch, training, inference)"
                if self.max_pending is not None
                else "target_policy: a service runs on the first target that accepts it; first-free applies to "
                "jobs (batch, training, inference)"
            )
        if "kubernetes" in self.target and not self.image:
            raise ValueError("image: required because target includes 'kubernetes'; add e.g. image: python:3.11-slim")
        if (
            "slurm" in self.target
            and self.image
            and self.slurm.container == "pyxis"
            and self.container.registry_connection
        ):
            raise ValueError(
                "container.registry_connection: pyxis pulls with enroot, which reads registry logins from the nodes' "
                "enroot credentials file ($ENROOT_CONFIG_PATH/.credentials), not from the job: put the login there "
                "and remove registry_connection, or set slurm.container: podman or apptainer"
            )
        dupes = sorted(set(self.env) & set(self.secrets))
        if dupes:
            raise ValueError(f"env: env and secrets both set {', '.join(dupes)}; keep each name in one of them")
        k8s_secrets = [k for k, v in self.secrets.items() if not v.read_by_airflow]
        if k8s_secrets and self.target != ["kubernetes"]:
            raise ValueError(
                f"secrets: {', '.join(k8s_secrets)} come from Kubernetes secrets, which only the kubernetes target can "
                "read; use target: kubernetes or an Airflow Variable/Connection reference"
            )
