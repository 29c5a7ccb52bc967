"""The flexorch job spec: one pydantic model tree for every kind of workload.

A spec is one of five kinds, chosen by ``kind``: ``service``, ``training``, ``batch``,
``inference`` and ``pipeline``. They share the workload fields (what to run, where, with
which resources); a service adds replicas/port/health/update/reconcile; a pipeline has
``steps``, each a workload whose unset fields inherit the pipeline's values.

Every field carries a description, so the JSON Schema (``flexorch schema``) documents
itself and editors can autocomplete. YAML keys equal field names.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

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
    retries_shorthand,
    scalar_to_str,
)
from flexorch_provider.spec.service import ServiceFields, check_schedule
from flexorch_provider.spec.targets import KubernetesOptions, LocalOptions, SlurmOptions, SshOptions

TARGETS = ("kubernetes", "ssh", "slurm", "local")
# Targets whose backend keeps long-running services (Backend.runs_services; a unit test keeps them equal).
SERVICE_TARGETS = ("kubernetes", "ssh", "local")
KINDS = ("service", "training", "batch", "inference", "pipeline")


# --- shared blocks ---------------------------------------------------------------------
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
Run = Annotated[
    Text | Annotated[list[Text], Field(min_length=1)],
    Field(description="What to run: a shell script (string) or an argv list run without a shell."),
]


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
    workdir: Annotated[
        Text | None,
        Field(
            description="Working directory of the job (relative paths: from the account's home). It must exist "
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
    timeout: Annotated[Duration | None, Field(description="Kill the job after this long: '6h', '30m'.")] = None
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


class Identity(FlexModel):
    """Who a top-level spec is and when it runs."""

    name: Annotated[Name, Field(description="DAG id and object name: lowercase letters, digits, '-'; ≤ 63.")]
    description: Annotated[str | None, Field(description="What this workload is; shown in the Airflow UI.")] = None
    owner: Annotated[str, Field(min_length=1, max_length=100, description="Owning team or person.")] = "airflow"
    tags: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=100)]], Field(description="Airflow DAG tags.")
    ] = Field(default_factory=list)
    schedule: Annotated[
        str | None, Field(description="Cron expression, preset (@daily, @hourly, ...) or null for manual runs.")
    ] = None
    start_date: Annotated[
        date | datetime | None, Field(description="First logical date (needed for catchup/backfill).")
    ] = None
    catchup: Annotated[bool, Field(strict=True, description="Run every missed interval since start_date.")] = False

    def _check_identity(self) -> None:
        if self.schedule is not None:
            check_schedule(self.schedule, "schedule")
        if self.catchup and self.start_date is None:
            raise ValueError("start_date: required because catchup is true; add e.g. start_date: 2025-01-01")
        if self.catchup and self.schedule in (None, "@once", "@continuous"):
            raise ValueError("catchup: catchup: true needs a periodic schedule (cron or @daily-like preset)")


# --- kinds -----------------------------------------------------------------------------
class _StepIdentity(FlexModel):
    name: Annotated[Name, Field(description="Step name, unique in the pipeline; becomes the task id.")]
    after: Annotated[
        list[Name], BeforeValidator(lambda v: [v] if isinstance(v, str) else v), OrShorthand({"type": "string"}),
        Field(description="Steps that must succeed before this one."),
    ] = Field(default_factory=list)  # fmt: skip


class Job(Workload):
    """A workload that runs: a batch, training, inference or service spec, or such a pipeline step."""

    run: Run
    if TYPE_CHECKING:  # every concrete job class has these (Identity or the step's identity)
        name: str
        kind: Literal["batch", "training", "inference", "service"]

    @property
    def is_service(self) -> bool:
        return self.kind == "service"

    @model_validator(mode="after")
    def _rules(self) -> Any:
        if not isinstance(self, _StepIdentity):  # steps are checked with inherited fields by the pipeline
            self.check_workload()
        if isinstance(self, ServiceFields):
            self._check_service()
        if isinstance(self, Identity):
            self._check_identity()
        return self


class BatchStep(_StepIdentity, Job):
    """A step that runs to completion."""

    kind: Literal["batch"] = "batch"


class TrainingStep(_StepIdentity, Job):
    """A training step (usually GPUs)."""

    kind: Literal["training"]


class InferenceStep(_StepIdentity, Job):
    """An inference (scoring) step."""

    kind: Literal["inference"]


class ServiceStep(_StepIdentity, ServiceFields, Job):
    """A step that deploys a long-running service."""

    kind: Literal["service"]


def _step_kind(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("kind", "batch")
        return kind if isinstance(kind, str) else "batch"
    return getattr(value, "kind", "batch")


Step = Annotated[
    Union[
        Annotated[BatchStep, Tag("batch")],
        Annotated[TrainingStep, Tag("training")],
        Annotated[InferenceStep, Tag("inference")],
        Annotated[ServiceStep, Tag("service")],
    ],
    Discriminator(_step_kind),
]


class BatchSpec(Identity, Job):
    """A job that runs to completion (ETL, evaluation, data prep)."""

    kind: Literal["batch"]


class TrainingSpec(Identity, Job):
    """A training job, usually with GPUs, possibly on several nodes."""

    kind: Literal["training"]


class InferenceSpec(Identity, Job):
    """A (usually scheduled) inference run: score a batch of data with a model."""

    kind: Literal["inference"]


class ServiceSpec(Identity, ServiceFields, Job):
    """A long-running service (web or inference API): replicas, port, health, updates."""

    kind: Literal["service"]


class PipelineSpec(Identity, Workload):
    """Steps with ``after:`` edges; each step inherits the pipeline's workload fields."""

    kind: Literal["pipeline"]
    steps: Annotated[list[Step], Field(min_length=1, description="The steps; each is a workload with a name.")]

    @model_validator(mode="after")
    def _graph(self) -> PipelineSpec:
        self._check_identity()
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"steps: names must be unique; {', '.join(dupes)} used more than once")
        for i, step in enumerate(self.steps):
            for dep in step.after:
                if dep == step.name:
                    raise ValueError(f"steps[{i}].after: step {step.name!r} cannot run after itself")
                if dep not in names:
                    import difflib

                    hint = difflib.get_close_matches(dep, names, n=1)
                    raise ValueError(
                        f"steps[{i}].after: {dep!r} is not a step of this pipeline"
                        + (f"; did you mean {hint[0]!r}?" if hint else f" (steps: {', '.join(names)})")
                    )
        cycle = _find_cycle({s.name: list(s.after) for s in self.steps})
        if cycle:
            raise ValueError(f"steps: the after: edges form a cycle: {' → '.join(cycle)}; remove one edge")
        for i, step in enumerate(self.effective_steps()):
            try:
                step.check_workload()
            except ValueError as e:
                raise ValueError(f"steps[{i}].{e}") from None
        return self

    def effective_steps(self) -> list[Any]:
        """The steps with every unset field filled from the pipeline (env/secrets merged)."""
        out = []
        for step in self.steps:
            data = {}
            for field in Workload.model_fields:
                if field in step.model_fields_set:
                    value = getattr(step, field)
                    if field in ("env", "secrets"):
                        value = {**getattr(self, field), **value}
                else:
                    value = getattr(self, field)
                data[field] = value
            out.append(step.model_copy(update=data))
        return out


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


Spec = Annotated[
    Union[BatchSpec, TrainingSpec, InferenceSpec, ServiceSpec, PipelineSpec],
    Field(discriminator="kind"),
]
SpecModel = BatchSpec | TrainingSpec | InferenceSpec | ServiceSpec | PipelineSpec
SPEC_CLASSES: dict[str, type[BaseModel]] = {
    "batch": BatchSpec,
    "training": TrainingSpec,
    "inference": InferenceSpec,
    "service": ServiceSpec,
    "pipeline": PipelineSpec,
}
STEP_CLASSES: dict[str, type[BaseModel]] = {
    "batch": BatchStep,
    "training": TrainingStep,
    "inference": InferenceStep,
    "service": ServiceStep,
}
