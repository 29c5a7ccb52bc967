"""The run task does not trust check's XCom: it rebuilds its arguments from the run's conf, the
triggering user and the policy, and a cleared run task meets the budget and concurrency again."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from flexorch_provider.exceptions import PolicyError
from flexorch_provider.policy import Ledger
from flexorch_provider.policy.admission import admit, plan, verify
from flexorch_provider.submission import parse_submission

POLICY = """\
teams:
  nlp:
    members: [alice]
    targets: [local, slurm]
    max_gpus: 2
    max_timeout: 1h
    gpu_hours: {limit: 1, per: day}
    max_concurrent: 1
  ops:
    members: [bob]
    targets: [local]
"""
SPEC = "name: j\nkind: training\ntarget: slurm\nrun: echo hi\nresources: {gpus: 1}\ntimeout: 20m\n"
LOG = logging.getLogger("test")


@pytest.fixture
def policy(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "flexorch_policy.yaml"
    path.write_text(POLICY)
    return str(path)


def _admitted(policy: str, run: str = "r1", spec: str = SPEC):
    sub = parse_submission({"spec": spec})
    account = admit(sub, "alice", run, (policy, "nlp"), lambda *a: None, LOG)
    return sub, plan(sub, account)[0]


def test_the_plan_the_check_gave_verifies_and_names_the_account(policy):
    sub, given = _admitted(policy)
    assert verify(given, sub, 0, "alice", "r1", (policy, "nlp"), again=False) == {
        "team": "nlp",
        "user": "alice",
        "run": "r1",
    }


@pytest.mark.parametrize(
    ("edit", "differ"),
    [
        (lambda g: {**g, "spec": {**g["spec"], "resources": {"gpus": 8}}}, "spec"),
        (lambda g: {**g, "overrides": {"target": "local"}}, "overrides"),
        (lambda g: {**g, "account": {**g["account"], "team": "ops"}}, "account"),
        (lambda g: {**g, "account": None}, "account"),
        (lambda g: {**g, "after": [0]}, "after"),
    ],
)
def test_an_edited_xcom_is_refused_naming_what_differs(policy, edit, differ):
    sub, given = _admitted(policy)
    with pytest.raises(PolicyError, match=f"the run task's {differ} differ from what the run's conf"):
        verify(edit(given), sub, 0, "alice", "r1", (policy, "nlp"), again=False)
    with pytest.raises(PolicyError, match="map index"):
        verify(given, sub, 3, "alice", "r1", (policy, "nlp"), again=False)


def test_another_user_or_a_removed_policy_is_refused(policy, tmp_path):
    sub, given = _admitted(policy)
    with pytest.raises(PolicyError, match="user bob is in team ops, and flexorch-submit-nlp runs team nlp's"):
        verify(given, sub, 0, "bob", "r1", (policy, "nlp"), again=False)
    with pytest.raises(PolicyError, match="account differ"):  # bob on his own team's DAG: not his plan
        verify(given, sub, 0, "bob", "r1", (policy, "ops"), again=False)
    with pytest.raises(PolicyError, match="no policy file"):
        verify(given, sub, 0, "alice", "r1", (str(tmp_path / "gone.yaml"), "nlp"), again=False)


def test_a_cleared_run_task_meets_the_budget_and_the_concurrency_limit_again(policy):
    sub, given = _admitted(policy)
    assert verify(given, sub, 0, "alice", "r1", (policy, "nlp"), again=True)  # nothing used yet
    ledger = Ledger()
    ledger.append({"t": "start", "run": "r0", "job": "other", "try": "1.0", "team": "nlp", "gpus": 2, "cap": 3600})
    with pytest.raises(PolicyError) as refused:
        verify(given, sub, 0, "alice", "r1", (policy, "nlp"), again=True)
    text = str(refused.value)
    assert "1 of 1 concurrent runs are live" in text and "(a cleared run task is checked again)" in text
    assert verify(given, sub, 0, "alice", "r1", (policy, "nlp"), again=False)  # the first try: the check counted it


def test_the_run_task_refuses_arguments_no_check_sets(policy):
    from flexorch_provider.operators.submit import SubmittedStepOperator

    _, given = _admitted(policy)
    op = SubmittedStepOperator(task_id="run", policy_file=policy, submit_team="nlp", target="local", **given)
    run = SimpleNamespace(conf={"spec": SPEC}, triggering_user_name="alice", run_id="r1")
    context = {"dag_run": run, "ti": SimpleNamespace(map_index=0, try_number=1)}
    with pytest.raises(PolicyError, match="the run task was given target, which no check sets"):
        op._verify(context)
    ok = SubmittedStepOperator(task_id="run", policy_file=policy, submit_team="nlp", **given)
    ok._verify(context)
    assert ok.account == {"team": "nlp", "user": "alice", "run": "r1"}


def test_a_submitted_ssh_job_dials_only_hosts_its_connection_names(policy, monkeypatch):
    """The worker dials a submitted job's hosts with the fleet's credentials and sends them its
    secrets: a host the connection does not name (its host, its host_aliases) is refused, and so is
    a user@ or :port of the submitter's choosing."""
    import json

    from flexorch_provider.policy.admission import host_refusals
    from flexorch_provider.resolve import load_workload

    monkeypatch.setenv("AIRFLOW_CONN_FLEET", json.dumps({"conn_type": "ssh", "host": "gpu-0", "login": "svc",
                                                         "extra": {"host_aliases": {"gpu-1": "10.0.0.11"}}}))  # fmt: skip

    def job(*hosts):
        return load_workload({"name": "s", "kind": "batch", "target": "ssh", "run": "x",
                              "ssh": {"connection": "fleet", "hosts": list(hosts)}})  # fmt: skip

    assert host_refusals("nlp", job("gpu-0", "gpu-1")) == []
    for bad in ("gpu-2", "gpu-1.attacker.example", "gpu-1:2222", "root@gpu-1", "203.0.113.9"):
        (refusal,) = host_refusals("nlp", job("gpu-0", bad))
        assert refusal.startswith(f"team nlp: ssh host {bad} is not a host the connection fleet names"), refusal
    missing = load_workload({"name": "s", "kind": "batch", "target": "ssh", "run": "x",
                             "ssh": {"connection": "nowhere", "hosts": ["gpu-0"]}})  # fmt: skip
    assert "ssh.connection nowhere cannot be read here" in host_refusals("nlp", missing)[0]


def test_the_gpu_pools_file_names_more_hosts_of_a_connection(policy, monkeypatch, tmp_path):
    """The platform's GPU pools file lists an ssh pool's hosts on a connection: those names may be
    dialled too (only on that connection, only as written)."""
    import json

    from flexorch_provider.policy.admission import host_refusals
    from flexorch_provider.resolve import load_workload

    monkeypatch.setenv("AIRFLOW_CONN_FLEET", json.dumps({"conn_type": "ssh", "host": "gpu-0", "login": "svc"}))
    pools = tmp_path / "gpu_pools.yaml"
    pools.write_text("lab: {source: ssh, connection: fleet, hosts: [lab-1, lab-2]}\n"
                     "other: {source: ssh, connection: elsewhere, hosts: [far-1]}\n")  # fmt: skip
    monkeypatch.setenv("FLEXORCH_GPU_POOLS", str(pools))

    def job(*hosts):
        return load_workload({"name": "s", "kind": "batch", "target": "ssh", "run": "x",
                              "ssh": {"connection": "fleet", "hosts": list(hosts)}})  # fmt: skip

    assert host_refusals("nlp", job("gpu-0", "lab-1", "lab-2")) == []
    (refusal,) = host_refusals("nlp", job("lab-1", "far-1"))
    assert "ssh host far-1 is not a host the connection fleet names" in refusal and "lab-2" in refusal
    pools.write_text("lab: {source: ssh, connection: fleet, hosts: [lab-1], bogus: 1}\n")  # invalid: none count
    assert host_refusals("nlp", job("lab-1")) != []


def test_a_team_submits_only_through_its_own_dag(policy):
    """Each team has its own submit DAG; a user of another team triggering it (Airflow lets anyone
    who may trigger the DAG) is refused at check, saying which DAG is theirs, and so is the generic
    DAG on a server with teams."""
    sub = parse_submission({"spec": SPEC})
    with pytest.raises(PolicyError, match=r"alice is in team nlp, .* submit through flexorch-submit-nlp"):
        admit(sub, "alice", "r1", (policy, "ops"), lambda *a: None, LOG)
    with pytest.raises(PolicyError, match="flexorch-submit runs no team's submissions on a server with teams"):
        admit(sub, "alice", "r1", (policy, None), lambda *a: None, LOG)
    assert admit(sub, "alice", "r1", (policy, "nlp"), lambda *a: None, LOG)["team"] == "nlp"


def test_the_check_line_shows_the_budget_as_status_does(policy, caplog):
    """The check said "0.0 of 1" where `flexorch status --team` said "0.02": one rounding for both."""
    import logging
    import time

    Ledger().append({"t": "start", "run": "r0", "job": "x/run/r0/0", "try": "1.0", "team": "nlp", "gpus": 1,
                     "cap": None, "at": time.time() - 72})  # fmt: skip
    Ledger().append({"t": "end", "run": "r0", "job": "x/run/r0/0", "try": "1.0"})  # 1 GPU × 72 s = 0.02 h
    with caplog.at_level(logging.INFO, logger="test"):
        _admitted(policy, run="r9")
    assert "0.02 of 1 GPU-hours used this day" in caplog.text
