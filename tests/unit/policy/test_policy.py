"""The policy file is validated like a spec; each rule refuses with its name and numbers; the
ledger counts GPU-hours from the events of real runs (running jobs included)."""

from __future__ import annotations

import json
import logging
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
from flexorch_provider.store.files import FileStore

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
    connections: [ssh_default]
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


def test_a_submitted_job_may_not_name_a_gpu_pool_it_could_not_hold(tmp_path):
    """A submitted job runs as a map index of the run task, whose Airflow pool is fixed at parse time:
    its gpu_pool slots would never be taken, so the pool's limit would not hold; refused, saying why."""
    team = _policy(tmp_path).teams["nlp"]
    (refusal,) = static_refusals("nlp", team, _job(gpu_pool="lab"))
    assert refusal.startswith("team nlp: gpu_pool lab: a submitted job cannot hold Airflow pool slots"), refusal
    assert static_refusals("nlp", team, _job(gpu_pool="lab"), submitted=False) == []  # a dags-folder spec holds them


def test_submissions_set_only_the_usual_sbatch_options_unless_the_policy_widens_them(tmp_path):
    """An sbatch option that picks who pays or what is reserved, reorders the queue or mails anyone is
    not a submission's to set, unless the team's slurm_options names it (then exactly that list)."""
    team = _policy(tmp_path).teams["nlp"]
    for option, value in (("reservation", "maint"), ("wckey", "other-team"), ("mail-user", "x@example.org")):
        (refusal,) = static_refusals("nlp", team, _job(slurm={"partition": "gpu", "options": {option: value}}))
        assert refusal.startswith(f"team nlp: slurm.options {option} is not an option the team's submissions"), refusal
    usual = _job(slurm={"partition": "gpu", "options": {"constraint": "a100", "exclusive": "user"}})
    assert static_refusals("nlp", team, usual) == []
    reserved = _job(slurm={"partition": "gpu", "options": {"reservation": "maint"}})
    assert static_refusals("nlp", team, reserved, submitted=False) == []  # the dags folder is the platform's
    widened = team.model_copy(update={"slurm_options": ["reservation"]})
    assert static_refusals("nlp", widened, reserved) == []
    assert "slurm.options constraint is not an option" in static_refusals("nlp", widened, usual)[0]


def test_a_submitted_service_is_named_after_its_team(tmp_path):
    """One service name is one service on every target: a team owns the names that begin with its
    own, so a submission cannot replace or scale another team's service."""
    team = _policy(tmp_path).teams["guests"].model_copy(update={"services": True})
    svc = load_workload({"name": "nlp-embed", "kind": "service", "target": "ssh", "run": "serve", "port": 8000,
                         "ssh": {"hosts": ["gpu-1"]}})  # fmt: skip
    assert static_refusals("guests", team, svc) == [
        "team guests: a submitted service is named after its team: call it guests-nlp-embed "
        "(the team owns the service names that begin with 'guests-')"
    ]
    assert static_refusals("guests", team, svc.model_copy(update={"name": "guests-embed"})) == []
    assert static_refusals("guests", team, svc, submitted=False) == []  # the dags folder names its own


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
    ledger = Ledger(FileStore(tmp_path))
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
    (tmp_path / "usage.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"torn": ')
    used = ledger.gpu_hours("nlp", day, now)
    expected = 1.0 + 4 * 0.25 + 1 * (600 / 3600)  # ended + running till now + orphaned till its timeout
    assert abs(used - expected) < 0.001, used
    assert ledger.live_runs("nlp", now) == {"r2", "r5"}  # running, and checked but not started yet
    ledger.append({"t": "end", "run": "r2", "job": "b", "try": 1, "at": now})
    assert ledger.live_runs("nlp", now + 1) == {"r5"}
    assert ledger.live_runs("nlp", now + 200) == {"r5"}  # from its check until its tasks have ended


def test_a_run_counts_against_max_concurrent_from_check_to_end(tmp_path):
    """Between retries, between pipeline steps and while queued no job of a run is open, yet the run
    is live: it stops counting only once every run task of it has ended (as Airflow says), or when
    it has no run task long after its check (deleted)."""
    from flexorch_provider.policy.admission import close_ended

    ledger = Ledger(FileStore(tmp_path))
    now = time.time()
    for run, age in (("waiting", 600), ("finished", 600), ("deleted", 600), ("fresh", 5)):
        ledger.append({"t": "check", "run": run, "team": "nlp", "at": now - age})
    ledger.append({"t": "start", "run": "gone", "job": "s/run/gone/0", "try": 1, "team": "nlp", "gpus": 1,
                   "cap": None, "at": now - 60})  # fmt: skip
    states = {
        "waiting": {"run_0": "success", "run_1": "deferred"},  # step 2 waits for its retry
        "finished": {"run_0": "success", "run_1": "upstream_failed"},
        "gone": {"run_0": "failed"},  # its worker died before recording the end
    }
    asked = []

    def states_of(dag_id, runs):
        asked.append((dag_id, sorted(runs)))
        return {r: states[r] for r in runs if r in states}

    assert ledger.live_runs("nlp", now) == {"waiting", "finished", "deleted", "fresh", "gone"}
    close_ended(ledger, "nlp", now, states_of, logging.getLogger("t"))
    assert asked == [("flexorch-submit-nlp", ["deleted", "finished", "fresh", "gone", "waiting"])]
    assert ledger.live_runs("nlp", now) == {"waiting", "fresh"}
    close_ended(ledger, "nlp", now, lambda d, r: 1 / 0, logging.getLogger("t"))  # unreadable: nothing closed
    assert ledger.live_runs("nlp", now) == {"waiting", "fresh"}


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
    assert refusal is not None and "4 GPUs × 2h × 4 runs = 32.00 GPU-hours" in refusal
    # each try may run again once per recovery (a resume exit code is the job's own choice): they count too
    recovering = _job(
        resources={"gpus": 4}, timeout="2h", retries={"count": 1, "recover": 2, "resume_exit_codes": [33]}
    )
    refusal = budget_refusal("nlp", team, [recovering], used=40.0)
    assert refusal is not None and "4 GPUs × 2h × 6 runs = 48.00 GPU-hours" in refusal


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


def test_submissions_are_denied_by_default(tmp_path, monkeypatch):
    """No policy file refuses every submission with how to write one; a team without targets may not
    submit to local, one without secrets may use none (dags-folder specs keep today's behaviour)."""
    import logging

    from flexorch_provider.exceptions import PolicyError
    from flexorch_provider.policy.admission import admit
    from flexorch_provider.submission import parse_submission

    sub = parse_submission({"spec": "name: j\nkind: batch\nrun: echo hi\n"})
    missing = str(tmp_path / "flexorch_policy.yaml")
    with pytest.raises(PolicyError, match=r"no policy file at .*flexorch_policy\.yaml: submissions are refused"):
        admit(sub, "alice", "run-1", (missing, None), lambda *a: None, logging.getLogger("t"))

    team = _policy(tmp_path).teams["guests"]  # no targets rule, no secrets rule
    local = load_workload({"name": "l", "kind": "batch", "run": "x", "target": "local", "secrets": {"T": "variable:t"}})
    refusals = static_refusals("guests", team, local)
    assert any("target local runs a submitted job on the Airflow worker itself" in r for r in refusals)
    assert any(
        "secrets.T: variable:t: the team has no secrets rule, so a submission may use none" in r for r in refusals
    )
    assert static_refusals("guests", team, local, submitted=False) == []  # the platform's own specs


def test_flexorch_up_writes_a_policy_for_its_users_only_where_there_is_none(tmp_path, monkeypatch):
    from flexorch_provider.cli.up import _dev_policy, parse_users

    monkeypatch.delenv("FLEXORCH_POLICY", raising=False)
    home, specs = tmp_path / "home", tmp_path / "specs"
    home.mkdir()
    specs.mkdir()
    path = _dev_policy(home, specs)
    assert path == home / "flexorch_policy.yaml" and load_policy(path).team_of("admin")[0] == "dev"
    users = parse_users(["alice:user:nlp", "bob:user:cv", "eve:viewer"])
    policy = load_policy(_dev_policy(home, specs, users))  # still flexorch's own text: written again
    assert policy.team_of("alice")[0] == "nlp" and policy.teams["nlp"].max_gpus == 2
    assert policy.team_of("bob")[0] == "cv" and policy.team_of("eve")[0] == "dev"  # no team: the default
    path.write_text(path.read_text() + "# edited\n")
    assert _dev_policy(home, specs).read_text().endswith("# edited\n")  # edited: the user's from now on
    (specs / "flexorch_policy.yaml").write_text("teams: {}\n")
    assert _dev_policy(home, specs) is None  # the folder's own policy wins
    monkeypatch.setenv("FLEXORCH_POLICY", "/etc/flexorch/policy.yaml")
    assert _dev_policy(tmp_path / "other", tmp_path) is None
    for bad, why in (("alice", "NAME:ROLE"), ("alice:root", "not one of viewer"), ("admin:user", "its admin"),
                     ("a b:user", "names are letters")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            parse_users([bad])


def test_the_policy_says_who_a_job_runs_as_and_where(tmp_path):
    """Another team's connection, account, QoS, namespace, service account, tolerations, a host
    mount, a look-alike host and a secret in another namespace: each refused by its rule."""
    text = (
        POLICY.replace("default_team: guests\n", "")
        + """\
  ml:
    members: [mallory]
    targets: [ssh, slurm, kubernetes]
    ssh_hosts: ["gpu-*"]
    connections: [ml_*]
    slurm_accounts: [ml]
    kubernetes_namespaces: [ml]
    mount_paths: ["/data/ml/*"]
    secrets: ["kubernetes:ml/*"]
"""
    )
    team = _policy(tmp_path, text).teams["ml"]

    def refusals(**fields):
        base = {"name": "x", "kind": "batch", "run": "r", "target": "ssh", "ssh": {"connection": "ml_fleet",
                "hosts": ["gpu-1"]}}  # fmt: skip
        return static_refusals("ml", team, load_workload({**base, **fields}))

    assert refusals() == []
    assert refusals(ssh={"connection": "nlp_fleet", "hosts": ["gpu-1"]}) == [
        "team ml: ssh.connection nlp_fleet is not allowed (allowed: ml_*)"
    ]
    for host in ("gpu-1.attacker.example", "gpu-2:2222", "root@gpu-3"):
        assert f"ssh host {host} is not allowed" in refusals(ssh={"connection": "ml_fleet", "hosts": [host]})[0]
    slurm = {"target": "slurm", "slurm": {"connection": "ml_login", "account": "nlp", "qos": "high"}}
    assert refusals(**slurm) == [
        "team ml: slurm.account nlp is not allowed (allowed: ml)",
        "team ml: slurm.qos high: the team has no slurm_qos rule, so a submission may not use it",
    ]
    k8s = {"target": "kubernetes", "image": "i:1", "kubernetes": {"connection": "ml_k8s", "namespace": "prod",
           "service_account": "admin", "tolerations": [{"operator": "Exists"}], "checkpoint_claim": "other-ckpt"},
           "checkpoint_dir": "/ckpt", "secrets": {"DB": "kubernetes:db/password"}}  # fmt: skip
    assert refusals(**k8s) == [
        "team ml: secrets.DB: kubernetes:db/password is not a reference the team may use (allowed: kubernetes:ml/*)",
        "team ml: kubernetes.namespace prod is not allowed (allowed: ml)",
        "team ml: kubernetes.service_account admin: the team has no kubernetes_service_accounts rule, so a "
        "submission may not use it",
        "team ml: kubernetes.checkpoint_claim other-ckpt: the team has no kubernetes_claims rule, so a submission "
        "may not use it",
        "team ml: kubernetes.tolerations: the team may not tolerate taints (kubernetes_tolerations)",
    ]
    k8s["kubernetes"] = {"connection": "ml_k8s", "namespace": "ml"}
    del k8s["checkpoint_dir"]
    assert refusals(**k8s) == []  # the same secret name, in the team's namespace
    mounts = {"image": "i:1", "container": {"mounts": [{"host": "/var/run/docker.sock", "path": "/s"}]}}
    assert refusals(**mounts) == [
        "team ml: container.mounts host path /var/run/docker.sock is not allowed (allowed: /data/ml/*)"
    ]
    # a dags-folder spec (the platform's own) is held only to the rules that are set
    nlp = _policy(tmp_path, text).teams["nlp"]
    folder = load_workload({"name": "x", "kind": "batch", "run": "r", "target": "slurm", "image": "ghcr.io/acme/t:1",
                            "timeout": "1h", "slurm": {"partition": "gpu", "account": "any"}})  # fmt: skip
    assert static_refusals("nlp", nlp, folder, submitted=False) == []


def test_policy_audit_names_each_open_rule_and_strict_fails_on_them(tmp_path, capsys):
    from flexorch_provider.cli.main import main

    (tmp_path / "flexorch_policy.yaml").write_text(
        "teams:\n"
        "  tight: {members: [a], targets: [slurm], slurm_partitions: [gpu], max_gpus: 4, max_timeout: 2h,\n"
        "          gpu_hours: {limit: 10}, max_concurrent: 2, images: [ghcr.io/acme/]}\n"
        "  loose: {members: [b], secrets: ['*'], connections: ['*']}\n"
    )
    assert main(["policy", "audit", str(tmp_path), "--strict"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("team tight:") for line in out)
    assert "team loose: max_gpus: a job may ask for any number of GPUs" in out
    assert "team loose: secrets: '*' allows every secret of its kind" in out
    assert "team loose: connections: '*' allows every connection of its kind" in out
    assert out[-1].startswith("10 open rule(s) in ")
    (tmp_path / "flexorch_policy.yaml").write_text(
        "teams:\n  tight: {members: [a], targets: [slurm], slurm_partitions: [gpu], max_gpus: 4, max_timeout: 2h,\n"
        "          gpu_hours: {limit: 10}, max_concurrent: 2, images: [ghcr.io/acme/]}\n"
    )
    assert main(["policy", "audit", str(tmp_path / "flexorch_policy.yaml"), "--strict"]) == 0
    assert main(["policy", "audit", str(tmp_path / "none"), "--strict"]) == 0
    assert "every submission is refused" in capsys.readouterr().out
