"""The flexorch routes ask Airflow's auth manager which DAGs the logged-in user may read, and
list jobs and services of those DAGs only; without a login, nothing answers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from flexorch_provider.ui import api, overview


@pytest.fixture
def client(monkeypatch):
    from airflow.api_fastapi import app as airflow_app
    from airflow.api_fastapi.core_api.security import get_user

    asked = []

    class AuthManager:
        def get_authorized_dag_ids(self, *, user, method="GET", session=None):
            asked.append((user.name, method))
            return {"mine"}

        def is_authorized_variable(self, *, method, user, details=None):
            return False  # not an admin: sees the platform's DAGs and its own team's submissions

    monkeypatch.setattr(airflow_app, "get_auth_manager", lambda: AuthManager())
    seen: dict[str, object] = {}
    monkeypatch.setattr(overview, "jobs", lambda dags, *a: seen.setdefault("jobs", set(dags)) and [])
    monkeypatch.setattr(overview, "services", lambda dags, *a: seen.setdefault("services", set(dags)) and [])
    monkeypatch.setattr(overview, "job", lambda d, r, t, m, dags: None if d not in dags else {"dag_id": d})
    monkeypatch.setattr(overview, "pools", lambda *a: {"pools": []})
    app = api.create_app()
    app.dependency_overrides[get_user] = lambda: SimpleNamespace(name="alice")
    return TestClient(app), asked, seen


def test_jobs_and_services_are_those_of_dags_the_user_may_read(client):
    c, asked, seen = client
    assert c.get("/api/jobs").json() == {"jobs": []}
    assert c.get("/api/services").json() == {"services": []}
    assert seen == {"jobs": {"mine"}, "services": {"mine"}}
    assert asked == [("alice", "GET"), ("alice", "GET")]
    assert c.get("/api/jobs/mine/r1/train").json() == {"dag_id": "mine"}
    other = c.get("/api/jobs/theirs/r1/train")
    assert other.status_code == 404 and "you may read" in other.json()["detail"]


def test_the_page_is_served_to_a_logged_in_user(client):
    c, _, _ = client
    for path in ("/", "/jobs/mine/r1/train", "/services/web"):
        r = c.get(path)
        assert r.status_code == 200 and "<title>flexorch</title>" in r.text and 'ROOT + "/api/"' in r.text


def test_a_bad_log_cursor_is_a_clear_422(client, monkeypatch):
    c, _, _ = client
    monkeypatch.setattr(overview, "service", lambda name, dags: ("mine", object()))
    r = c.get("/api/services/web/logs", params={"cursor": "[1, 2]"})
    assert r.status_code == 422 and "cursors" in r.json()["detail"]
