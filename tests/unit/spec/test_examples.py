"""Every shipped example validates, matches the JSON Schema, and renders back to itself."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from flexorch_provider.spec import KINDS, TARGETS, json_schema, load_spec, load_spec_text
from flexorch_provider.spec.loader import iter_spec_files
from flexorch_provider.spec.render import spec_to_dict, to_yaml

EXAMPLES = list(iter_spec_files([Path(__file__).parents[3] / "spec_examples"]))  # specs only


def test_examples_cover_every_kind_and_target():
    specs = [load_spec(p) for p in EXAMPLES]
    assert len(specs) >= 8
    kinds = {s.kind for s in specs}
    targets = set()
    for s in specs:
        for step in s.effective_steps() if s.kind == "pipeline" else [s]:
            targets.update(step.target)
    assert kinds == set(KINDS)
    assert targets == set(TARGETS)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_valid_against_json_schema(path):
    data = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))
    validator = jsonschema.Draft202012Validator(json_schema())
    assert [e.message for e in validator.iter_errors(data)] == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_render_round_trips(path):
    spec = load_spec(path)
    rendered = to_yaml(spec_to_dict(spec, effective=False))
    assert load_spec_text(rendered) == spec


def test_schema_is_valid_and_documented():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    training = schema["$defs"]["TrainingSpec"]["properties"]
    assert "description" in training["resources"]
    undocumented = [
        f"{name}.{field}"
        for name, model in schema["$defs"].items()
        for field, prop in model.get("properties", {}).items()
        if "description" not in prop and field != "kind"
    ]
    assert undocumented == []


def test_schema_rejects_unknown_keys():
    validator = jsonschema.Draft202012Validator(json_schema())
    assert not validator.is_valid({"name": "a", "kind": "batch", "run": "x", "resorces": {}})
    assert validator.is_valid({"name": "a", "kind": "batch", "run": "x"})


def test_spec_reference_doc_is_current():
    from flexorch_provider.spec.reference import markdown_reference

    doc = Path(__file__).parents[3] / "docs" / "spec-reference.md"
    assert doc.read_text() == markdown_reference(), (
        "regenerate: flexorch schema --format markdown > docs/spec-reference.md"
    )
