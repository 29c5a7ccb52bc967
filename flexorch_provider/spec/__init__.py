"""The job spec: models, loader and JSON Schema."""

from flexorch_provider.spec.loader import iter_spec_files, load_spec, load_spec_text, parse_spec
from flexorch_provider.spec.models import (
    KINDS,
    BatchSpec,
    InferenceSpec,
    Job,
    PipelineSpec,
    ServiceSpec,
    SpecModel,
    TrainingSpec,
)
from flexorch_provider.spec.schema import json_schema
from flexorch_provider.spec.workload import SERVICE_TARGETS, TARGETS

__all__ = [
    "KINDS",
    "SERVICE_TARGETS",
    "TARGETS",
    "BatchSpec",
    "InferenceSpec",
    "Job",
    "PipelineSpec",
    "ServiceSpec",
    "SpecModel",
    "TrainingSpec",
    "iter_spec_files",
    "json_schema",
    "load_spec",
    "load_spec_text",
    "parse_spec",
]
