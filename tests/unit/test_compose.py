"""docker-compose.yaml and Dockerfile: no Docker engine runs here, so these check what can
drift without one — Airflow option names, the image version against our constraints, the
paths mounted and copied, and that every Airflow component is there."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import yaml

from flexorch_provider.dev.stack import COMPONENTS, LOADER_FILE

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
AIRFLOW_SERVICES = {
    name: svc for name, svc in COMPOSE["services"].items() if svc.get("image") == "flexorch-airflow:dev"
}


def test_every_airflow_component_runs_from_our_image():
    commands = {svc["command"][0] for svc in AIRFLOW_SERVICES.values()}
    assert commands == {*COMPONENTS, "db", "celery"}
    assert all(svc["build"] == "." for svc in AIRFLOW_SERVICES.values())


def test_it_runs_the_celery_executor_on_two_workers_with_a_shared_flexorch_store():
    """The deployment users have: tasks on several machines, so flexorch's state is in the database
    every component reaches, not on one container's disk."""
    from airflow.models.connection import Connection

    env = AIRFLOW_SERVICES["scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" and env["AIRFLOW__CELERY__BROKER_URL"].startswith(
        "redis://redis:"
    )
    # plain postgresql:// would mean psycopg 3 to SQLAlchemy 2.1, which the image does not have
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    workers = [s for s in AIRFLOW_SERVICES.values() if s["command"] == ["celery", "worker"]]
    assert len(workers) == 2 and len({w["hostname"] for w in workers}) == 2
    assert "redis" in COMPOSE["services"] and "redis" in AIRFLOW_SERVICES["scheduler"]["depends_on"]
    store = Connection(uri=env[f"AIRFLOW_CONN_{env['FLEXORCH_STORE_CONN'].upper()}"])
    assert store.conn_type in ("postgres", "postgresql") and store.host == "postgres" and store.schema == "airflow"
    assert all(
        not str(v).startswith("flexorch-runs") for svc in AIRFLOW_SERVICES.values() for v in svc.get("volumes", [])
    )


def test_airflow_options_in_the_environment_exist():
    from airflow.configuration import conf

    env = AIRFLOW_SERVICES["scheduler"]["environment"]
    options = [k for k in env if k.startswith("AIRFLOW__")]
    assert len(options) >= 8
    for key in options:
        _, section, option = key.split("__", 2)
        known = conf.configuration_description.get(section.lower(), {}).get("options", {})
        assert option.lower() in known, f"{key} is not an Airflow option"


def test_the_jwt_secret_must_be_set_by_the_user():
    secret = AIRFLOW_SERVICES["api-server"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert re.fullmatch(r"\$\{AIRFLOW_JWT_SECRET:\?.+\}", secret)


def test_the_image_matches_the_pinned_airflow_and_copies_what_exists():
    pinned = re.search(r"^ARG AIRFLOW_VERSION=(\S+)$", DOCKERFILE, re.M).group(1)
    assert pinned == version("apache-airflow")
    constraints = (ROOT / "constraints" / "constraints-3.11.txt").read_text()
    assert f"apache-airflow=={pinned}\n" in constraints
    for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", DOCKERFILE, re.M):
        for source in line.split():
            assert (ROOT / source).exists(), source


def test_mounted_folders_exist_and_hold_the_loader_and_specs():
    volumes = AIRFLOW_SERVICES["scheduler"]["volumes"]
    host_paths = [v.split(":")[0] for v in volumes if v.startswith("./")]
    assert host_paths == ["./dags", "./spec_examples"]
    assert (ROOT / "dags" / LOADER_FILE).exists()
    assert list((ROOT / "spec_examples").glob("*.yaml"))
