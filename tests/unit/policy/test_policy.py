"""The policy file is validated like a spec; each rule refuses with its name and numbers; the
ledger counts GPU-hours from the events of real runs (running jobs included)."""

from __future__ import annotations

import json
import time

import pytest

from flexorch_provider.exceptions import SpecError
from flexorch_provider.policy import (
    Ledger,
    budget_refusal,
    concurrency_refusal,
    load_policy,
    period_start,
    static_refusals,
)
from flexorch_provider.resolve import load_workload

POLICY = """\
teams:
  nlp:
    members: [alice, bob]
    targets: [slurm, local]
    slurm_partitions: [gpu, "debug-*"]
    images: [ghcr.io/acme/]
    max_gpus: 8
    max_timeout: 6h
    gpu_hours: {limit: 64, per: day}
    max_concurrent: 2
    secrets: ["variable:hf_*"]
  guests:
    members: [eve]
    ssh_hosts: ["gpu-*"]
default_team: guests
"""


def _policy(tmp_path, text=POLICY):
    path = tmp_path / "flexorch_policy.yaml"
    path.write_text(text)
    return load_policy(path)


def _job(**fields):
    spec = {"name": "j", "kind": "training", "run": "python t.py", "target": "slurm", "image": "ghcr.io/acme/t:1",
            "timeout": "2h", "resources": {"gpus": 4}, "slurm": {"partition": "gpu"}, **fields}  # fmt: skip
    return load_workload(spec)


def test_members_find_their_team_and_the_rest_the_default(tmp_path):
    policy = _policy(tmp_path)
    assert policy.team_of("alice")[0] == "nlp" and policy.team_of("eve")[0] == "guests"
    assert policy.team_of("mallory")[0] == "guests"
    assert load_policy(tmp_path / "missing.yaml") is None  # no file: everything allowed


def test_a_bad_policy_file_names_file_line_and_field(tmp_path):
    with pytest.raises(SpecError) as e:
        _policy(tmp_path, POLICY.replace("max_gpus: 8", "max_gpu: 8"))
    problem = e.value.problems[0]
    assert (problem.line, problem.field) == (7, "teams.nlp.max_gpu")
    assert "did you mean 'max_gpus'" in problem.message
    with pytest.raises(SpecError, match="'bob' is already in team 'nlp'"):
        _policy(tmp_path, POLICY.replace("[eve]", "[eve, bob]"))
    with pytest.raises(SpecError, match="default_team: 'ops' is not one of the teams"):
        _policy(tmp_path, POLICY.replace("default_team: guests", "default_team: ops"))


def test_a_job_within_the_rules_passes_and_each_rule_refuses_with_its_numbers(tmp_path):
    team = _policy(tmp_path).teams["nlp"]
    assert static_refusals("nlp", team, _job()) == []
    cases = {
        "target kubernetes is not allowed (allowed: slurm, local)": _job(target=["slurm", "kubernetes"]),
        "slurm.partition big is not allowed (allowed: gpu, debug-*)": _job(slurm={"partition": "big"}),
        "image docker.io/evil:1 is not allowed (allowed prefixes: ghcr.io/acme/)": _job(image="docker.io/evil:1"),
        "at most 8 GPUs per job; this job asks 16": _job(resources={"gpus": 8, "nodes": 2}),
        "timeout 12h is longer than the team's 6h": _job(timeout="12h"),
        "secrets.TOKEN: variable:prod_token is not a reference the team may use": _job(
            secrets={"TOKEN": "variable:prod_token"}
        ),
    }
    for expected, job in cases.items():
        refusals = static_refusals("nlp", team, job)
        assert (len(refusals) == 1 and refusals[0] == f"team nlp: {expected}") or expected in refusals[0], refusals
    assert "jobs need a timeout of at most 6h" in static_refusals("nlp", team, _job(timeout=None))[0]
    assert static_refusals("nlp", team, _job(slurm={"partition": "debug-a100"})) == []


def test_services_are_refused_unless_the_team_allows_them(tmp_path):
    team = _policy(tmp_path).teams["guests"]
    svc = load_workload({"name": "s", "kind": "service", "target": "ssh", "run": "serve", "port": 8000,
                         "ssh": {"hosts": ["gpu-1"]}})  # fmt: skip
    assert static_refusals("guests", team, svc) == [
        "team guests: may not deploy services by submission (services: false in the policy)"
    ]
    assert static_refusals("guests", team, svc, submitted=False) == []  # a dags-folder spec is the platform's
    assert (
        "ssh host other-1 is not allowed"
        in static_refusals(
            "guests", team, svc.model_copy(update={"ssh": svc.ssh.model_copy(update={"hosts": ["other-1"]})})
        )[0]
    )


def test_the_budget_counts_used_hours_and_the_most_the_job_may_use(tmp_path):
    team = _policy(tmp_path).teams["nlp"]
    assert budget_refusal("nlp", team, [_job()], used=56.0) is None  # 56 + 4 GPUs × 2 h = 64
    refusal = budget_refusal("nlp", team, [_job(timeout="6h", resources={"gpus": 8})], used=62.0)
    assert refusal == (
        "team nlp: 62.00 of 64 GPU-hours used today; this submission asks up to 8 GPUs × 6h = 48.00 GPU-hours"
    )
    assert concurrency_refusal("nlp", team, 1) is None
    assert concurrency_refusal("nlp", team, 2) == "team nlp: 2 of 2 concurrent runs are live; wait for one to end"


def test_the_ledger_counts_gpu_hours_of_ended_running_and_orphaned_jobs(tmp_path):
    ledger = Ledger(tmp_path / "usage.jsonl")
    day = period_start("day", time.time())
    now = day + 12 * 3600  # noon: every event below is today
    events = [
        {"t": "start", "run": "r1", "job": "a", "try": 1, "team": "nlp", "gpus": 2, "cap": 36000, "at": day + 60},
        {"t": "end", "run": "r1", "job": "a", "try": 1, "at": day + 60 + 1800},  # 2 GPUs × 0.5 h
        {"t": "start", "run": "r2", "job": "b", "try": 1, "team": "nlp", "gpus": 4, "cap": None, "at": now - 900},
        {"t": "start", "run": "r3", "job": "c", "try": 1, "team": "nlp", "gpus": 1, "cap": 600, "at": now - 3000},
        {"t": "start", "run": "r4", "job": "d", "try": 1, "team": "cv", "gpus": 8, "cap": None, "at": now - 900},
        {"t": "check", "run": "r5", "team": "nlp", "at": now - 10},
    ]
    ledger.path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"torn": ')
    used = ledger.gpu_hours("nlp", day, now)
    expected = 1.0 + 4 * 0.25 + 1 * (600 / 3600)  # ended + running till now + orphaned till its timeout
    assert abs(used - expected) < 0.001, used
    assert ledger.live_runs("nlp", now) == {"r2", "r5"}  # running, and checked but not started yet
    ledger.append({"t": "end", "run": "r2", "job": "b", "try": 1, "at": now})
    assert ledger.live_runs("nlp", now + 1) == {"r5"}
    assert ledger.live_runs("nlp", now + 200) == set()  # a checked run that never started stops counting


def test_periods_start_at_utc_midnight_and_monday():
    monday_noon = 1796644800.0  # 2026-12-07 (a Monday) 12:00 UTC
    assert period_start("day", monday_noon) == monday_noon - 12 * 3600
    assert period_start("week", monday_noon + 2 * 86400) == monday_noon - 12 * 3600


def test_every_way_of_asking_for_gpus_counts_against_the_limit_and_the_budget(tmp_path):
    """GPUs asked through slurm.options, ssh placement all on many hosts, a service's replicas and a
    job's retries are what the job may hold or use, and the limits see them (issue 28's review)."""
    from flexorch_provider.policy import gpus_of

    team = _policy(tmp_path).teams["nlp"]
    sneaky = _job(resources={}, slurm={"partition": "gpu", "options": {"gpus-per-node": "a100:8"}})
    assert gpus_of(sneaky) == 8
    per_task = _job(resources={"nodes": 2}, slurm={"partition": "gpu", "options": {"gpus-per-task": 2,
                                                                                  "ntasks-per-node": 4}})  # fmt: skip
    assert (
        gpus_of(per_task) == 16
        and "at most 8 GPUs per job; this job asks 16" in static_refusals("nlp", team, per_task)[0]
    )
    fleet = load_workload({"name": "f", "kind": "batch", "run": "x", "target": "ssh", "resources": {"gpus": 1},
                           "ssh": {"placement": "all", "hosts": [f"gpu-{i}" for i in range(20)]}})  # fmt: skip
    assert gpus_of(fleet) == 20
    svc = load_workload({"name": "s", "kind": "service", "target": "ssh", "run": "serve", "port": 8000,
                         "replicas": 50, "resources": {"gpus": 1}, "ssh": {"hosts": ["gpu-1"]}})  # fmt: skip
    assert gpus_of(svc) == 50
    retried = _job(resources={"gpus": 4}, timeout="2h", retries={"count": 2})
    refusal = budget_refusal("nlp", team, [retried], used=40.0)  # 40 + 4 GPUs × 2 h × 3 tries = 64: just fits
    assert refusal is None
    refusal = budget_refusal("nlp", team, [_job(resources={"gpus": 4}, timeout="2h", retries={"count": 3})], used=40.0)
    assert refusal is not None and "4 GPUs × 2h × 4 tries = 32.00 GPU-hours" in refusal


def test_an_sbatch_option_value_is_one_word_and_gpu_variables_are_flexorchs(tmp_path):
    with pytest.raises(SpecError, match="sbatch option 'nice' must be one word"):
        _job(slurm={"partition": "gpu", "options": {"nice": "0 --partition=x --account=y --gres=gpu:8"}})
    with pytest.raises(SpecError, match="must be one word"):
        _job(slurm={"partition": "gpu", "options": {"begin": "--partition=x"}})
    assert _job(slurm={"partition": "gpu", "options": {"constraint": "a100&nvlink", "signal": "B:USR1@60"}})
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        with pytest.raises(SpecError, match=f"{name} is set by flexorch from resources.gpus"):
            _job(env={name: "all"})
        with pytest.raises(SpecError, match=f"{name} is set by flexorch"):
            _job(secrets={name: "variable:x"})
