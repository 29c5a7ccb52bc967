"""A spec → the normalized, fully defaulted document that ``flexorch render`` prints."""

from __future__ import annotations

from typing import Any

import yaml

from flexorch_provider.spec.models import PipelineSpec, SpecModel

_FIRST = ("name", "kind", "description", "owner", "tags", "schedule", "start_date", "catchup", "target", "image")


def spec_to_dict(spec: SpecModel, *, effective: bool = True) -> dict[str, Any]:
    """JSON-compatible dict, identity keys first; pipeline steps with inherited values filled in."""
    data = spec.model_dump(mode="json")
    if effective and isinstance(spec, PipelineSpec):
        data["steps"] = [_ordered(s.model_dump(mode="json")) for s in spec.effective_steps()]
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
