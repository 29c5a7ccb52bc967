"""A spec → the normalized, fully defaulted document that ``flexorch render`` prints."""

from __future__ import annotations

from typing import Any

import yaml

from flexorch_provider.spec.models import PipelineSpec, SpecModel

_FIRST = ("name", "kind", "description", "owner", "tags", "schedule", "start_date", "catchup", "target", "image")


def spec_to_dict(spec: SpecModel, *, effective: bool = True) -> dict[str, Any]:
    """JSON-compatible dict, identity keys first; pipeline steps with inherited values filled in."""
    data = spec.model_dump(mode="json")
    if isinstance(spec, PipelineSpec):
        # effective: what each step will run with; otherwise only what each step sets itself,
        # so the output reads back to the same spec
        steps = spec.effective_steps() if effective else spec.steps
        data["steps"] = [_ordered(s.model_dump(mode="json", exclude_unset=not effective)) for s in steps]
    return _ordered(data)


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: data[k] for k in _FIRST if k in data}
    out.update({k: v for k, v in data.items() if k not in out and k not in ("steps", "after")})
    for k in ("after", "steps"):
        if k in data:
            out[k] = data[k]
    return out


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
