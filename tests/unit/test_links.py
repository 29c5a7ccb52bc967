"""Extra links: a template per target (connection extra, then [flexorch] link_templates), else the
job's view on the flexorch page; values URL-quoted; a template the job cannot fill falls back."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from flexorch_provider import links
from flexorch_provider.backends.base import JobHandle
from flexorch_provider.backends.kubernetes.backend import KubernetesBackend
from flexorch_provider.backends.local import LocalBackend
from flexorch_provider.backends.slurm.backend import SlurmBackend
from flexorch_provider.backends.ssh import SshBackend
from flexorch_provider.records import JobRecord

TI = SimpleNamespace(dag_id="train", task_id="fit", run_id="manual__2026-12-02T10:00:00+00:00", map_index=-1)


@pytest.fixture(autouse=True)
def no_config(monkeypatch):
    monkeypatch.delenv("AIRFLOW__FLEXORCH__LINK_TEMPLATES", raising=False)
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)


def record(data: dict) -> JobRecord:
    out = JobRecord.from_dict({"run_key": "train/fit/r/-1", **data})
    assert out is not None
    return out


def slurm_job(conn: str | None = None) -> JobRecord:
    handle = JobHandle("slurm", "4242", "train/fit/r/-1", {"conn": conn, "name": "flexorch-train-fit-abc"})
    return record({"target": "slurm", "job_id": "4242", "where": SlurmBackend().where(handle)})


def test_without_a_template_the_link_is_the_jobs_view_on_the_flexorch_page():
    url = links.job_url(TI, slurm_job())
    assert url == "/flexorch/jobs/train/manual__2026-12-02T10%3A00%3A00%2B00%3A00/fit"
    mapped = SimpleNamespace(**{**vars(TI), "map_index": 0})
    assert links.job_url(mapped, slurm_job()).endswith("/fit?map_index=0")


def test_the_base_url_comes_first(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example/")
    assert links.job_url(TI, slurm_job()).startswith("https://airflow.example/flexorch/jobs/train/")


def test_a_configured_template_per_target(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW__FLEXORCH__LINK_TEMPLATES",
        json.dumps({"slurm": "https://grafana.example/d/slurm?var-job={slurm_job_id}&dag={dag_id}&run={run_id}"}),
    )
    url = links.job_url(TI, slurm_job())
    assert url == (
        "https://grafana.example/d/slurm?var-job=4242&dag=train&run=manual__2026-12-02T10%3A00%3A00%2B00%3A00"
    )
    # another target has no template: the page
    local = JobHandle("local", "k/1", "train/fit/r/-1", {"run_dir": "/runs/k/1", "host": "w1"})
    public = record({"target": "local", "job_id": "k/1", "where": LocalBackend().where(local)})
    assert links.job_url(TI, public).startswith("/flexorch/jobs/")


def test_a_template_naming_a_missing_field_falls_back_to_the_page(monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW__FLEXORCH__LINK_TEMPLATES", json.dumps({"slurm": "https://x/{namespace}"}))
    assert links.job_url(TI, slurm_job()).startswith("/flexorch/jobs/")
    assert "namespace" in caplog.text


def test_bad_config_is_logged_not_raised(monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW__FLEXORCH__LINK_TEMPLATES", "{not json")
    assert links.job_url(TI, slurm_job()).startswith("/flexorch/jobs/")
    assert "not JSON" in caplog.text


def test_the_connections_extra_wins(monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLEXORCH__LINK_TEMPLATES", json.dumps({"ssh": "https://config/{host}"}))
    monkeypatch.setenv(
        "AIRFLOW_CONN_LAB",
        json.dumps(
            {
                "conn_type": "ssh",
                "host": "h",
                "extra": {"flexorch_link_template": "https://lab/{host}{run_dir}?l={label}"},
            }
        ),
    )
    handle = JobHandle("ssh", "k/1@gpu-1", "r", {"conn": "lab", "placement": "any",
                       "hosts": [{"host": {"host": "gpu-1", "port": 22, "user": None}, "run_dir": "/r/k/1"}]})  # fmt: skip
    public = record({"target": "ssh", "job_id": handle.job_id, "where": SshBackend().where(handle)})
    assert links.job_url(TI, public) == "https://lab/gpu-1%2Fr%2Fk%2F1?l=gpu-1%3A22"


def test_services_have_their_own_template_and_page(monkeypatch):
    assert links.service_url(TI, "embed", "kubernetes") == "/flexorch/services/embed"
    monkeypatch.setenv("AIRFLOW__FLEXORCH__LINK_TEMPLATES", json.dumps({"kubernetes.service": "https://k/{service}"}))
    assert links.service_url(TI, "embed", "kubernetes") == "https://k/embed"


def test_every_backend_says_where_its_job_runs():
    k8s = JobHandle("kubernetes", "flexorch-fit-abc", "r", {"conn": "k", "namespace": "ml", "secret": None,
                    "registry_secret": None, "nodes": 1})  # fmt: skip
    where = KubernetesBackend().where(k8s)
    assert (
        where["namespace"] == "ml"
        and where["job_name"] == "flexorch-fit-abc"
        and "ml/flexorch-fit-abc" in where["summary"]
    )
    slurm = slurm_job("slurm_login").where
    assert slurm["slurm_job_id"] == "4242" and "slurm_login" in slurm["summary"]
    assert "local cluster" in slurm_job().where["summary"]


def test_fill_quotes_values_and_refuses_format_specs():
    assert links.fill("https://x/{a}?b={b}", {"a": "a b/c", "b": 1}) == "https://x/a%20b%2Fc?b=1"
    with pytest.raises(KeyError):
        links.fill("{a:>10}", {"a": "x"})
