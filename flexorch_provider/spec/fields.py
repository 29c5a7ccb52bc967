"""Reusable field types of the spec: names, durations, memory, GPUs, secrets, retries.

Each type accepts what a user naturally writes (``"6h"``, ``"64Gi"``, ``"A100:2"``,
``"variable:hf_token"``) and serializes back to that form, so rendered specs round-trip.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from flexorch_provider.spec.units import (
    format_duration,
    format_memory,
    normalize_gpu_type,
    parse_duration,
    parse_gpu_shorthand,
    parse_memory,
)

# DNS-1123 label: valid as an Airflow DAG/task id, a Kubernetes object name, a Slurm job
# name and a path component.
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONN_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")


# --- reusable field types --------------------------------------------------------------
def _dns_label(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) > 63:
            raise ValueError(f"{value!r} is {len(value)} characters long; the limit is 63")
        if not DNS_LABEL_RE.match(value):
            suggestion = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:63] or "my-job"
            raise ValueError(
                f"{value!r} is not a valid name: use lowercase letters, digits and '-', starting and "
                f"ending with a letter or digit (it becomes a DAG id and a Kubernetes name); "
                f"try {suggestion!r}"
            )
    return value


def _no_nul(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("contains a NUL byte, which no process can receive; remove it")
    return value


def scalar_to_str(value: Any) -> Any:
    """YAML turns ``PORT: 8080`` into an int and ``DEBUG: true`` into a bool; env wants text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | date):
        return str(value)
    return value


Name = Annotated[str, BeforeValidator(_dns_label), Field(min_length=1, max_length=63)]
Text = Annotated[str, BeforeValidator(_no_nul)]
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "description": "seconds"},
                {"type": "string", "pattern": r"^\s*(\d+\s*d)?\s*(\d+\s*h)?\s*(\d+\s*m(in)?)?\s*(\d+\s*s)?\s*$"},
            ],
            "examples": ["90s", "30m", "6h", "1h30m"],
        }
    ),
]


def _at_least_a_second(value: timedelta) -> timedelta:
    if value < timedelta(seconds=1):
        raise ValueError("must be at least 1s (0s would repeat it as fast as the machine can, without pause)")
    return value


def _a_real_timeout(value: timedelta) -> timedelta:
    if value < timedelta(seconds=1):
        raise ValueError("must be at least 1s; 0 is not 'no limit': leave timeout out for no limit")
    return value


Period = Annotated[Duration, AfterValidator(_at_least_a_second)]  # between checks, reads: 0 would spin
Timeout = Annotated[Duration, AfterValidator(_a_real_timeout)]
MemorySize = Annotated[
    int,
    BeforeValidator(parse_memory),
    PlainSerializer(format_memory, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KMGT]i?|[KMGT]B)$", "examples": ["16Gi", "512Mi"]}),
]
GpuType = Annotated[str, BeforeValidator(lambda v: normalize_gpu_type(v) if isinstance(v, str) else v)]
ConnId = Annotated[str, Field(pattern=_CONN_ID_RE.pattern, description="An Airflow connection id.")]


class OrShorthand:
    """JSON Schema: the model's own schema, or one of these shorthand forms."""

    def __init__(self, *alternatives: dict[str, Any]) -> None:
        self.alternatives = alternatives

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"anyOf": [*self.alternatives, handler(core_schema)]}


class FlexModel(BaseModel):
    """Base of every spec model: unknown keys are errors (with a did-you-mean)."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=False, str_strip_whitespace=False)


# --- resources -------------------------------------------------------------------------
class GpuSpec(FlexModel):
    """GPUs a job needs. Shorthand: ``2``, ``"A100"``, ``"A100:2"``, ``"A100:80GB:2"``."""

    count: Annotated[int, Field(strict=True, ge=0, le=1024, description="Number of GPUs per node.")] = 1
    type: Annotated[
        GpuType | None,
        Field(description="GPU model, normalized to upper case without vendor prefix: 'a100' → 'A100'."),
    ] = None
    memory: Annotated[MemorySize | None, Field(description="Minimum memory per GPU, e.g. '80GB' or '40Gi'.")] = None


GpuRequest = Annotated[
    GpuSpec,
    BeforeValidator(parse_gpu_shorthand),
    OrShorthand(
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^[^:]+(:[^:]+){0,2}$", "examples": ["A100:2", "H100:80GB:8"]},
    ),
]


class Resources(FlexModel):
    """What one node of the job needs."""

    cpus: Annotated[
        float | None, Field(strict=True, gt=0, le=4096, description="CPU cores per node (fractions allowed).")
    ] = None
    memory: Annotated[MemorySize | None, Field(description="Memory per node with a unit: '64Gi', '512Mi'.")] = None
    shm: Annotated[
        MemorySize | None,
        Field(
            description="Size of /dev/shm in the job's container, e.g. '8Gi' (data loaders with worker processes "
            "outgrow the 64 MiB default): podman --shm-size; kubernetes: a memory-backed volume, counted in the "
            "pod's memory. Needs image."
        ),
    ] = None
    gpus: Annotated[
        GpuRequest | None,
        Field(description="GPUs per node: 2, 'A100:2', 'A100:80GB:2', or {count, type, memory}."),
    ] = None
    nodes: Annotated[
        int,
        Field(
            strict=True,
            ge=1,
            le=4096,
            description="Number of nodes (multi-node training; slurm, kubernetes, ssh: one host each). Each node gets the other "
            "resources, its rank and the group's addresses (FLEXORCH_NODE_RANK, FLEXORCH_NNODES, "
            "FLEXORCH_NODE_ADDRS, FLEXORCH_GPUS_PER_NODE, FLEXORCH_MASTER_ADDR/PORT, and torchrun's PET_* "
            "variables): a bare `torchrun --nproc-per-node N` forms the group.",
        ),
    ] = 1


# --- secrets ---------------------------------------------------------------------------
SecretSource = Literal["variable", "connection", "kubernetes"]


class SecretRef(FlexModel):
    """Where a secret lives. Literal secret values are never accepted in a spec.

    Shorthand strings: ``variable:NAME`` (an Airflow Variable), ``connection:CONN_ID`` or
    ``connection:CONN_ID.password`` (a field of an Airflow Connection: password, login,
    host, extra, uri), ``kubernetes:SECRET/KEY`` (a Kubernetes secret; kubernetes target).
    """

    source: Annotated[SecretSource, Field(description="variable, connection or kubernetes.")]
    name: Annotated[
        str, Field(min_length=1, max_length=250, description="Variable key, connection id, or secret name.")
    ]
    key: Annotated[
        str | None,
        Field(description="Connection field (default password) or key inside the Kubernetes secret."),
    ] = None

    @property
    def read_by_airflow(self) -> bool:
        """Airflow resolves variable and connection references; a kubernetes one is read by the
        cluster itself (a secretKeyRef), so its value never passes through Airflow."""
        return self.source != "kubernetes"

    @model_validator(mode="after")
    def _check(self) -> SecretRef:
        if self.source == "connection" and (self.key or "password") not in (
            "password",
            "login",
            "host",
            "extra",
            "uri",
        ):
            raise ValueError(f"connection field {self.key!r} is not one of password, login, host, extra, uri")
        if self.source == "kubernetes" and not self.key:
            raise ValueError("a kubernetes secret needs a key: write 'kubernetes:SECRET_NAME/KEY'")
        if self.source == "kubernetes" and not DNS_SUBDOMAIN_RE.match(self.name):
            raise ValueError(f"{self.name!r} is not a valid Kubernetes secret name")
        return self

    def __str__(self) -> str:
        if self.source == "kubernetes":
            return f"kubernetes:{self.name}/{self.key}"
        if self.source == "connection" and self.key:
            return f"connection:{self.name}.{self.key}"
        return f"{self.source}:{self.name}"


def _parse_secret_ref(value: Any) -> Any:
    if isinstance(value, str):
        source, sep, rest = value.partition(":")
        if not sep or source not in ("variable", "connection", "kubernetes") or not rest:
            raise ValueError(
                "must be a reference, never a literal value: write 'variable:NAME' (Airflow Variable), "
                "'connection:CONN_ID[.password|login|extra]' or 'kubernetes:SECRET/KEY', and store the "
                "value itself in Airflow or Kubernetes"
            )
        if source == "kubernetes":
            name, _, key = rest.partition("/")
            return {"source": source, "name": name, "key": key or None}
        if source == "connection" and "." in rest:
            name, _, key = rest.rpartition(".")
            if key in ("password", "login", "host", "extra", "uri"):
                return {"source": source, "name": name, "key": key}
        return {"source": source, "name": rest}
    return value


Secret = Annotated[
    SecretRef,
    BeforeValidator(_parse_secret_ref),
    PlainSerializer(str, return_type=str),
    OrShorthand(
        {
            "type": "string",
            "pattern": "^(variable|connection|kubernetes):.+$",
            "examples": ["variable:hf_token", "connection:wandb.password", "kubernetes:hf/token"],
        },
    ),
]


class Retries(FlexModel):
    """How a failed job runs again. Shorthand: ``retries: 2``.

    ``count`` is for the job's own failures (Airflow's task retries). A failure of the infrastructure
    (its host lost, preempted, its node failed, its pod evicted, no target with room for it) or an exit code in
    ``resume_exit_codes`` is submitted again within the same try, up to ``recover`` times, with a
    delay doubling from ``recover_delay`` (at most 10 minutes), and never counts against ``count``;
    the job finds ``FLEXORCH_RESTART_COUNT`` and ``FLEXORCH_RESTART_CAUSE`` in its environment."""

    count: Annotated[int, Field(strict=True, ge=0, le=100, description="How many times to retry a failed run.")] = 0
    delay: Annotated[Duration, Field(description="Wait between retries, e.g. '5m'.")] = timedelta(minutes=5)
    recover: Annotated[
        int,
        Field(
            strict=True,
            ge=0,
            le=1000,
            description="How many times the same try submits the job again after a failure of the infrastructure "
            "(host lost, preempted, node failed, pod evicted, no target with room for it now) or a resume exit "
            "code; not counted in count.",
        ),
    ] = 0
    recover_delay: Annotated[
        Duration, Field(description="The first wait before such a resubmission; it doubles each time, to 10m at most.")
    ] = timedelta(seconds=10)
    resume_exit_codes: Annotated[
        list[Annotated[int, Field(strict=True, ge=1, le=255)]],
        Field(description="Exit codes that mean 'start me again' (e.g. [33] after saving a checkpoint): recovered."),
    ] = Field(default_factory=list)


def retries_shorthand(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"count": value}
    return value
