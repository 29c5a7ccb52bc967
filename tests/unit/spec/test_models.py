"""Behaviour of the spec models beyond single-field validation."""

from __future__ import annotations

import pytest

from flexorch_provider.exceptions import SpecError
from flexorch_provider.spec import PipelineSpec, load_spec_text


def test_gpu_forms_are_equivalent():
    a = load_spec_text("name: a\nkind: training\nrun: x\nresources: {gpus: 'a100:80GB:2'}\n")
    b = load_spec_text(
        "name: a\nkind: training\nrun: x\nresources:\n  gpus: {count: 2, type: nvidia-A100, memory: 80GB}\n"
    )
    assert a.resources.gpus == b.resources.gpus
    assert a.resources.gpus.type == "A100" and a.resources.gpus.count == 2


def test_yaml12_booleans_keep_norway_a_string():
    spec = load_spec_text("name: a\nkind: batch\nrun: x\nenv: {COUNTRY: NO, DEBUG: true, PORT: 8080}\n")
    assert spec.env == {"COUNTRY": "NO", "DEBUG": "true", "PORT": "8080"}


def test_target_string_becomes_list_and_default_is_local():
    assert load_spec_text("name: a\nkind: batch\nrun: x\ntarget: ssh\n").target == ["ssh"]
    assert load_spec_text("name: a\nkind: batch\nrun: x\n").target == ["local"]


def test_secret_shorthands():
    spec = load_spec_text(
        "name: a\nkind: batch\nrun: x\nsecrets:\n  A: variable:hf_token\n  B: connection:wandb.login\n  C: connection:db\n"
    )
    assert (spec.secrets["A"].source, spec.secrets["A"].name) == ("variable", "hf_token")
    assert (spec.secrets["B"].name, spec.secrets["B"].key) == ("wandb", "login")
    assert (spec.secrets["C"].name, spec.secrets["C"].key) == ("db", None)


PIPELINE = """\
name: p
kind: pipeline
target: slurm
image: img:1
env: {A: "1", B: "1"}
retries: 2
slurm: {partition: gpu}
steps:
  - name: prep
    run: x
    env: {B: "2"}
  - name: train
    kind: training
    after: prep
    target: kubernetes
    run: y
    retries: 0
"""


def test_pipeline_steps_inherit_defaults():
    spec = load_spec_text(PIPELINE)
    assert isinstance(spec, PipelineSpec)
    prep, train = spec.effective_steps()
    assert prep.target == ["slurm"] and prep.slurm.partition == "gpu"
    assert prep.env == {"A": "1", "B": "2"}  # merged, step wins
    assert prep.retries.count == 2
    assert train.target == ["kubernetes"] and train.image == "img:1"  # image inherited satisfies k8s rule
    assert train.retries.count == 0
    assert train.after == ["prep"]


def test_pipeline_inherited_target_needs_image():
    with pytest.raises(SpecError) as info:
        load_spec_text("name: p\nkind: pipeline\ntarget: kubernetes\nsteps:\n  - {name: a, run: x}\n")
    assert info.value.problems[0].field == "steps[0].image"


def test_service_defaults():
    spec = load_spec_text("name: s\nkind: service\nrun: x\nport: 80\nhealth: {http: /}\n")
    assert spec.replicas == 1 and spec.update.strategy == "rolling"
    assert spec.health.interval.total_seconds() == 10
