"""JSON Schema export of the spec, for editors (yaml-language-server) and docs."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from flexorch_provider.spec.models import Spec

SCHEMA_ID = "https://flexorch.dev/schema/spec.json"


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a flexorch spec file."""
    schema = TypeAdapter(Spec).json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "flexorch job spec",
        "description": "One YAML file describing a service, training, batch or inference job, or a pipeline of them.",
        **schema,
    }
