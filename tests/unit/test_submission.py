"""A submitted conf is validated the same on the laptop and on the server: file:line: field
errors, --set overrides typed as YAML, pipelines in dependency order, and templates that may
name only the run's dates and id."""

from __future__ import annotations

import pytest

from flexorch_provider.exceptions import SpecError
from flexorch_provider.submission import MAX_SPEC_CHARS, overrides_from, parse_submission

JOB = "name: train\nkind: training\nrun: python t.py --day {{ ds }}\nresources: {gpus: 1}\ntimeout: 1h\n"
PIPELINE = """\
name: flow
kind: pipeline
steps:
  - {name: report, after: [train, prep], run: echo report}
  - {name: prep, run: echo prep}
  - {name: train, after: prep, run: echo train}
"""


def test_a_job_with_overrides_typed_as_yaml():
    sub = parse_submission({"spec": JOB, "set": ["resources.gpus=4", "env.MODE=fast", "env.N='7'"]})
    ((step, job),) = sub.jobs
    assert step is None and job.resources.gpus.count == 4 and job.env == {"MODE": "fast", "N": "7"}
    assert sub.name == "train" and sub.after == {}


def test_a_pipeline_runs_its_steps_after_what_they_need():
    sub = parse_submission({"spec": PIPELINE})
    assert [s for s, _ in sub.jobs] == ["prep", "train", "report"]
    assert sub.after == {"prep": [], "train": ["prep"], "report": ["train", "prep"]}
    one = parse_submission({"spec": PIPELINE, "step": "train"})
    assert [s for s, _ in one.jobs] == ["train"] and one.after == {"train": []}  # one step alone


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"spec": JOB.replace("resources", "resorces")}, "<submitted spec>:4: resorces: unknown key; did you mean"),
        ({"spec": JOB, "step": "x"}, "--step applies to pipelines"),
        ({"spec": PIPELINE, "step": "nope"}, "'nope' is not a step (steps: report, prep, train)"),
        ({"spec": JOB, "set": ["gpus"]}, "'gpus' is not KEY=VALUE"),
        ({"spec": JOB, "set": ["resources.gpus=[1, 2]"]}, "one scalar"),
        ({"spec": JOB, "extra": 1}, "unknown conf keys extra"),
        ({"spec": ""}, "conf.spec must hold the spec's YAML text"),
        ({"spec": "x" * (MAX_SPEC_CHARS + 1)}, f"larger than {MAX_SPEC_CHARS} characters"),
        ({"spec": JOB.replace("{{ ds }}", "{{ var.value.prod_password }}")}, "not var (pass Variables and Connections"),
        ({"spec": JOB.replace("{{ ds }}", "{{ conn.db.password }}")}, "run: a submitted spec's templates may use"),
        ({"spec": JOB + "env: {A: '{{ ti.xcom_pull() }}'}\n"}, "env.A: a submitted spec's templates"),
        ({"spec": JOB.replace("{{ ds }}", "{{ ds ")}, "template syntax"),
        # the review's attacks: each refused with the field, the spec's line and the reason
        (
            {"spec": JOB.replace("{{ ds }}", "{{ macros.uuid.os.popen('id -un').read() }}")},
            "<submitted spec>:3: run: macros.uuid is not available in a submitted spec",
        ),
        (
            {"spec": JOB + "env: {K: \"{{ macros.uuid.os.environ['AIRFLOW__CORE__FERNET_KEY'] }}\"}\n"},
            "<submitted spec>:6: env.K: macros.uuid is not available",
        ),
        (
            {"spec": JOB.replace("{{ ds }}", "{% include 'flexorch_policy.yaml' %}")},
            "run: {% include %} is not allowed in a submitted spec",
        ),
        (
            {"spec": PIPELINE.replace("run: echo prep", 'run: "{{ ds.__class__ }}"')},
            "<submitted spec>:5: steps.prep.run: attributes starting with _ are not allowed",
        ),
    ],
)
def test_what_is_refused_says_where_and_what_to_do(conf, message):
    with pytest.raises(SpecError) as e:
        parse_submission(conf)
    assert message in str(e.value)


def test_dates_run_id_params_and_macros_are_allowed_in_templates():
    spec = JOB.replace("{{ ds }}", "{{ ds_nodash }}-{{ run_id }}-{{ params.x }}-{{ macros.ds_add(ds, 1) }}")
    assert parse_submission({"spec": spec}).jobs


def test_set_builds_nested_overrides_and_refuses_a_value_used_as_a_mapping():
    assert overrides_from(["a.b=1", "a.c=true", "d="]) == {"a": {"b": 1, "c": True}, "d": ""}
    with pytest.raises(SpecError, match="used as a mapping"):
        overrides_from(["a=1", "a.b=2"])
