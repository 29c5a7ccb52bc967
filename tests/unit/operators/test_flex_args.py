"""The operators' own argument logic: service actions, jobs and services kept to their own operator,
and the date macros of manual runs."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pendulum
import pytest

from flexorch_provider.backends.base import Backend
from flexorch_provider.backends.local import LocalBackend
from flexorch_provider.exceptions import ConfigurationError, SubmitError
from flexorch_provider.operators.base import date_macros_from_run_after
from flexorch_provider.operators.flex import FlexOperator
from flexorch_provider.operators.service import FlexServiceOperator

JOB = {"name": "j", "kind": "batch", "run": "echo hi"}
SERVICE = {"name": "svc", "kind": "service", "run": "python serve.py", "replicas": 2}


def test_a_service_deploys_by_default_and_checks_its_action():
    assert FlexServiceOperator(task_id="d", spec=SERVICE).action == "deploy"
    assert FlexServiceOperator(task_id="u", spec=SERVICE, action="undeploy").action == "undeploy"
    with pytest.raises(ConfigurationError, match="deploy, undeploy, reconcile"):
        FlexServiceOperator(task_id="x", spec=SERVICE, action="redeploy")
    # a template is checked once rendered, not at parse time
    t = FlexServiceOperator(task_id="t", spec=SERVICE, action="{{ params.action }}")
    assert t.action == "{{ params.action }}"


def test_jobs_and_services_each_have_their_operator_and_the_error_says_which():
    with pytest.raises(ConfigurationError, match="svc is a service: run its actions with FlexServiceOperator"):
        FlexOperator(task_id="s", spec=SERVICE)
    with pytest.raises(ConfigurationError, match="j is a batch job, not a service: run it with FlexOperator"):
        FlexServiceOperator(task_id="j", spec=JOB)
    assert "action" not in FlexOperator.template_fields and "placement" not in FlexServiceOperator.template_fields


def test_a_target_without_service_support_refuses_the_deploy():
    class JobsOnly(LocalBackend):
        name = "jobs-only"
        service = Backend.service  # the contract's default

    job = SimpleNamespace(action="deploy", run_key="k")
    with pytest.raises(SubmitError, match="jobs-only target cannot run services"):
        JobsOnly().service(job, print)  # type: ignore[arg-type]


def test_manual_run_without_logical_date_gets_dates_from_run_after(caplog):
    run_after = pendulum.datetime(2026, 11, 24, 13, 5, 9, tz="UTC")
    context = {"dag_run": SimpleNamespace(run_after=run_after, logical_date=None)}
    with caplog.at_level(logging.INFO):
        date_macros_from_run_after(context, logging.getLogger("t"))
    assert context["ds"] == "2026-11-24"
    assert context["ds_nodash"] == "20261124"
    assert context["ts"] == "2026-11-24T13:05:09+00:00"
    assert context["ts_nodash"] == "20261124T130509"
    assert "no logical date" in caplog.text


def test_runs_with_a_logical_date_keep_theirs():
    op = FlexOperator(task_id="j", spec={**JOB, "run": "echo {{ ds }}"})
    context = {"ds": "2025-01-02", "dag_run": SimpleNamespace(run_after=pendulum.now("UTC")), "params": {}}
    op.render_template_fields(context)
    assert op.run == "echo 2025-01-02"


@pytest.mark.parametrize(
    ("executor", "defer", "target", "expected"),
    [
        ("LocalExecutor", None, "local", True),  # one machine: the triggerer sees the job
        ("CeleryExecutor", None, "local", False),  # a triggerer may be elsewhere: the worker follows it
        ("LocalExecutor,CeleryExecutor", None, "local", False),
        ("CeleryExecutor", True, "local", True),  # the platform says its triggerer is on the workers' machine
        ("LocalExecutor", False, "local", False),
        ("CeleryExecutor", None, "ssh", True),  # remote jobs are seen from anywhere
    ],
)
def test_a_local_job_defers_only_where_a_triggerer_can_see_it(monkeypatch, executor, defer, target, expected):
    from flexorch_provider.backends.base import JobHandle

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    spec = {**JOB, "local": {"defer": defer}} if defer is not None else JOB
    op = FlexOperator(task_id="t", spec=spec)
    assert op._may_defer(JobHandle(target, "j1", "d/t/r/-1")) is expected
