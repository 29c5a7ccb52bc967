"""The flexorch job spec: one pydantic model tree for every kind of workload.

A spec is one of five kinds, chosen by ``kind``: ``service``, ``training``, ``batch``,
``inference`` and ``pipeline``. They share the workload fields (what to run, where, with
which resources; :mod:`flexorch_provider.spec.workload`); a service adds
replicas/port/health/update/reconcile; a pipeline has ``steps``, each a workload whose unset
fields inherit the pipeline's values.

Every field carries a description, so the JSON Schema (``flexorch schema``) documents
itself and editors can autocomplete. YAML keys equal field names.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag, model_validator

from flexorch_provider.spec.fields import FlexModel, Name, OrShorthand, Text
from flexorch_provider.spec.service import ServiceFields, check_schedule
from flexorch_provider.spec.workload import Workload

KINDS = ("service", "training", "batch", "inference", "pipeline")


# --- shared blocks ---------------------------------------------------------------------
Run = Annotated[
    Text | Annotated[list[Text], Field(min_length=1)],
    Field(description="What to run: a shell script (string) or an argv list run without a shell."),
]


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
        list[Name],
        BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
        OrShorthand({"type": "string"}),
        Field(description="Steps that must succeed before this one."),
    ] = Field(default_factory=list)


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
