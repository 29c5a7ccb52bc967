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


def test_the_route_list_needs_a_login_too():
    """/flexorch/openapi.json listed every route and parameter without a login; there is none now."""
    r = TestClient(api.create_app()).get("/openapi.json")
    assert r.status_code in (401, 403, 404) and "/api/jobs" not in r.text


def test_the_task_tab_of_an_unmapped_task_finds_its_job(client, monkeypatch):
    """The UI fills {MAP_INDEX} only for mapped tasks; an unfilled one means the unmapped task."""
    c, _, _ = client
    asked = []
    monkeypatch.setattr(overview, "job", lambda d, r, t, m, dags: asked.append(m) or {"dag_id": d})
    for query, index in (("{MAP_INDEX}", -1), ("3", 3), ("", -1), ("-1", -1)):
        assert c.get("/api/jobs/mine/r1/train", params={"map_index": query}).status_code == 200
        assert asked[-1] == index
