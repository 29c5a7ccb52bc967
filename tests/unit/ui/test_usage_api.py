"""/flexorch/api/usage: each team's GPU-hours and live runs from the ledger, and no answer
without a login (the route depends on Airflow's own get_user)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from flexorch_provider.policy import Ledger, period_start
from flexorch_provider.ui.api import create_app, usage


def test_usage_per_team_from_the_ledger(tmp_path, monkeypatch):
    policy = tmp_path / "flexorch_policy.yaml"
    policy.write_text(
        "teams:\n  nlp: {members: [alice], gpu_hours: {limit: 10}, max_concurrent: 2}\n  cv: {members: [bo]}\n"
    )
    monkeypatch.setenv("FLEXORCH_POLICY", str(policy))
    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path / "state"))
    now = period_start("day", time.time()) + 6 * 3600
    ledger = Ledger()
    ledger.append({"t": "start", "run": "r1", "job": "a/run/r1/0", "try": 1, "team": "nlp", "gpus": 2, "cap": None,
                   "at": now - 1800})  # fmt: skip
    out = usage(now, states_of=lambda dag, runs: {})  # Airflow says nothing has ended
    nlp, cv = out["teams"]
    assert out["policy"] == str(policy)
    assert nlp["team"] == "nlp" and nlp["gpu_hours"]["used"] == 1.0 and nlp["gpu_hours"]["limit"] == 10
    assert nlp["live_runs"] == 1 and nlp["max_concurrent"] == 2
    assert cv["gpu_hours"] == {"used": 0.0, "limit": None, "per": "day", "since": period_start("day", now)}


def test_no_policy_no_teams(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXORCH_POLICY", str(tmp_path / "missing.yaml"))
    assert usage() == {"policy": None, "teams": []}


def test_the_route_needs_a_login():
    client = TestClient(create_app())
    assert client.get("/api/usage").status_code in (401, 403)


def test_teams_are_separate_after_submit(tmp_path, monkeypatch):
    """A user who is not an admin sees their own team's usage and submitted jobs only; an admin
    (who may change Variables) sees every team; jobs of the platform's own DAGs stay visible."""
    from flexorch_provider.submission import SUBMIT_DAG_ID, submit_dag_id
    from flexorch_provider.ui.api import Viewer, me

    policy = tmp_path / "flexorch_policy.yaml"
    policy.write_text("teams:\n  nlp: {members: [alice]}\n  cv: {members: [bo]}\n")
    monkeypatch.setenv("FLEXORCH_POLICY", str(policy))
    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path / "state"))
    alice, ops = Viewer("alice", "nlp", admin=False), Viewer("root", None, admin=True)
    assert [t["team"] for t in usage(who=alice)["teams"]] == ["nlp"]
    assert [t["team"] for t in usage(who=ops)["teams"]] == ["nlp", "cv"]
    ours = {"dag_id": submit_dag_id("nlp"), "team": "nlp"}
    theirs = {"dag_id": submit_dag_id("cv"), "team": "cv"}
    unknown = {"dag_id": SUBMIT_DAG_ID, "team": None}
    platform = {"dag_id": "hello-local", "team": None}
    assert [alice.sees(r) for r in (ours, theirs, unknown, platform)] == [True, False, False, True]
    assert all(ops.sees(r) for r in (ours, theirs, unknown, platform))
    assert not Viewer("nobody", None, admin=False).sees(unknown)

    # the submit DAG `flexorch submit` picks: the team's own; none for a user in no team of a policy with teams
    assert me(Viewer("alice", "nlp", False, has_teams=True))["submit_dag"] == "flexorch-submit-nlp"
    assert me(Viewer("nobody", None, False, has_teams=True))["submit_dag"] is None
    assert me(Viewer("solo", None, False, has_teams=False))["submit_dag"] == "flexorch-submit"
