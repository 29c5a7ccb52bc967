"""A submitted spec's templates: plain values only, every way out of the sandbox refused by name
(the attacks of issue 28's review, and the ones around them)."""

from __future__ import annotations

import pytest

from flexorch_provider.plain_templates import TemplateRefused, check, plain_values, render

VALUES = {
    "ds": "2026-12-07",
    "ds_nodash": "20261207",
    "ts": "2026-12-07T10:00:00+00:00",
    "run_id": "manual__2026-12-07",
    "params": {"epochs": 3, "name": "x"},
}


def _values() -> dict:
    class Run:
        run_after = None
        run_id = "manual__2026-12-07"

    return plain_values({**VALUES, "dag_run": Run()})


def test_the_run_dates_params_and_the_two_date_helpers_render():
    text = "day {{ ds }} next {{ macros.ds_add(ds, 1) }} {{ macros.ds_format(ds, '%Y-%m-%d', '%d/%m') }} " \
        "e={{ params.epochs * 2 }} {{ params['name'] | upper }} {% if params.epochs > 1 %}many{% endif %} {{ run_id }}"  # fmt: skip
    assert render(text, _values()) == "day 2026-12-07 next 2026-12-08 07/12 e=6 X many manual__2026-12-07"
    assert render("no template $HOME {x}", {}) == "no template $HOME {x}"  # untouched, byte for byte
    assert render("a\r\nb {{ ds }}\n", _values()) == "a\r\nb 2026-12-07\n"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{{ macros.uuid.os.popen('id -un').read() }}", "macros.uuid is not available"),
        ("{{ macros.uuid }}", "macros.uuid is not available"),
        ("{{ macros['uuid'] }}", "macros[...] is not available"),
        ("{{ macros.ds_add.__globals__ }}", "attributes starting with _ are not allowed"),
        ("{% include 'flexorch_policy.yaml' %}", "{% include %} is not allowed"),
        ("{% import 'x' as y %}", "{% import %} is not allowed"),
        ("{% from 'x' import y %}", "{% from ... import %} is not allowed"),
        ("{% extends 'base' %}", "{% extends %} is not allowed"),
        ("{% for c in params.spec %}{% for d in params.spec %}x{% endfor %}{% endfor %}", "{% for %} loop"),
        ("{% macro m() %}x{% endmacro %}", "{% macro %} is not allowed"),
        ("{{ 9 ** 9 ** 9 }}", "** is not allowed"),
        ("{{ var.value.secret }}", "not var"),
        ("{{ conn.fleet.password }}", "not conn"),
        ("{{ ti.xcom_pull('x') }}", "not ti"),
        ("{{ dag_run.conf }}", "not dag_run"),
        ("{{ ds.upper() }}", "only macros.ds_add(...) and macros.ds_format(...) may be called"),
        ("{{ params.__class__ }}", "attributes starting with _ are not allowed"),
        ("{{ params['__class__'] }}", "attributes starting with _ are not allowed"),
        ("{{ ds | attr('upper') }}", "filter 'attr' is not allowed"),
        ("{{ params | map(attribute='x') | list }}", "filter 'map' is not allowed"),
        ("{{ lipsum() }}", "not lipsum"),
        ("{{ range(10) }}", "not range"),
        ("{{ cycler }}", "not cycler"),
        ("{% filter upper %}x{% endfilter %}", "{% filter %} is not allowed"),
        ("{{ ds", "template syntax"),
    ],
)
def test_every_way_out_is_refused_before_anything_renders(template, why):
    with pytest.raises(TemplateRefused, match=None) as refused:
        render(template, _values())
    assert why in str(refused.value)


def test_repeating_text_is_refused_at_render():
    check("{{ params.name * params.epochs }}")  # the shape is fine; what it multiplies is seen at render
    with pytest.raises(TemplateRefused, match="repeating text"):
        render("{{ params.name * 1000000000 }}", _values())


def test_plain_values_are_text_and_json_never_objects():
    import datetime as dt

    class Run:
        run_id = "r1"
        run_after = dt.datetime(2026, 12, 7, 1, 2, 3, tzinfo=dt.UTC)
        conf = {"spec": "secret text"}

    class Macros:
        uuid = object()

    values = plain_values({"ds": "2026-12-07", "dag_run": Run(), "macros": Macros(), "ti": object(),
                           "params": {"a": dt.date(2026, 1, 1)}, "var": object(), "conn": object()})  # fmt: skip
    assert set(values) == {"ds", "run_after", "run_id", "params", "macros"}
    assert values["run_after"] == "2026-12-07T01:02:03+00:00" and values["params"] == {"a": "2026-01-01"}
    assert not hasattr(values["macros"], "uuid")


def test_the_run_task_renders_with_plain_values_whatever_reached_it():
    """The ``run`` task does not trust ``check``'s XCom: a template that never went through the check
    (an edited XCom) is refused at render, with Airflow's real macros module in the context."""
    from types import SimpleNamespace

    from airflow.sdk.execution_time import macros

    from flexorch_provider.operators.submit import SubmittedStepOperator

    context = {"ds": "2026-12-07", "run_id": "r", "params": {}, "macros": macros, "dag_run": SimpleNamespace()}
    ok = SubmittedStepOperator(task_id="ok", spec={"name": "j", "kind": "batch", "run": "echo {{ ds }}\r\n",
                                                   "env": {"D": "{{ macros.ds_add(ds, -1) }}"}})  # fmt: skip
    ok.render_template_fields(dict(context))
    assert ok.run == "echo 2026-12-07\r\n" and ok.env == {"D": "2026-12-06"}
    attack = {"name": "j", "kind": "batch", "run": "echo {{ macros.uuid.os.popen('id -un').read() }}"}
    bad = SubmittedStepOperator(task_id="bad", spec=attack)
    with pytest.raises(TemplateRefused, match=r"macros\.uuid is not available"):
        bad.render_template_fields(dict(context))
    assert bad.run == attack["run"]  # nothing rendered, nothing ran
