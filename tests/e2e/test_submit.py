"""`flexorch submit` against a real Airflow stack with real logins (the simple auth manager's users,
not all-admins): the CLI talks to the REST API only, the server validates again and applies the
team policy, jobs run on the local target and the real Slurm (fake GPUs)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flexorch_provider.client.api import Api, Login
from flexorch_provider.client.progress import RunFollower
from flexorch_provider.dag_factory.folder import CACHE_DIR_ENV, SPECS_DIR_ENV
from flexorch_provider.dev.stack import LOADER_FILE, loader_source
from flexorch_provider.submission import submit_dag_id
from tests.e2e.stack import FLEXORCH, AirflowStack, cli, env_for, password

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e-submit"
NLP, BUDGET = submit_dag_id("nlp"), submit_dag_id("budget")  # each team submits through its own DAG

POLICY = """\
teams:
  nlp:
    members: [alice, eve]
    targets: [local, slurm]
    max_gpus: 2
    max_timeout: 1h
    secrets: ["variable:flex_*"]
    services: true
  budget:
    members: [bob]
    targets: [slurm]
    gpu_hours: {limit: 0.17, per: day}
    max_concurrent: 1
  coders:
    members: [carol]
    targets: [ssh]
    connections: [flexorch_test_code_host]
"""
CODERS, CODE_HOST = submit_dag_id("coders"), "flexorch_test_code_host"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, slurm_cluster, ssh_fleet):
    base = tmp_path_factory.mktemp("submit-stack")
    dags, specs = base / "dags", base / "specs"
    dags.mkdir()
    specs.mkdir()
    (dags / LOADER_FILE).write_text(loader_source())
    (specs / "flexorch_policy.yaml").write_text(POLICY)
    s = AirflowStack(
        base / "home",
        dags,
        {
            SPECS_DIR_ENV: str(specs),
            CACHE_DIR_ENV: str(base / "cache"),
            "FLEXORCH_RUN_DIR": str(base / "runs"),
            "FLEXORCH_STATE_DIR": str(base / "state"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,alice:user,bob:user,eve:viewer,carol:user",
            f"AIRFLOW_CONN_{CODE_HOST.upper()}": ssh_fleet.login_connection_json(ssh_fleet.hosts[1]),
            "AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME": "20",  # tokens expire while a run is followed
        },
        all_admins=False,
    )
    s.start()
    try:
        s.wait_dag(NLP, timeout=90)
        s.wait_dag(BUDGET, timeout=30)
        s.wait_dag(CODERS, timeout=30)
        s.fleet = ssh_fleet  # type: ignore[attr-defined]
        s.base = base  # type: ignore[attr-defined]
        yield s
    finally:
        s.stop()
        s.save_logs(ARTIFACTS)


class Live:
    """A CLI process whose output lines are read as they come (to act while it still runs)."""

    def __init__(self, stack: AirflowStack, user: str, *args: str) -> None:
        self.proc = subprocess.Popen([FLEXORCH, *args], env=env_for(stack, user), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or (self.proc.poll() is not None and not self.thread.is_alive()):
                raise AssertionError(f"{text!r} never came; output so far:\n" + "\n".join(self.lines))
            time.sleep(0.1)

    def finish(self, timeout: float = 180) -> int:
        code = self.proc.wait(timeout)
        self.thread.join(10)
        return code

    @property
    def run_id(self) -> str:
        line = next(ln for ln in self.lines if ln.startswith("==> submitted "))
        return line.split(" as run ")[1].split()[0]


def spec(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def gated(name: str, gate: Path, target: str = "local", extra: str = "") -> str:
    """A job that prints a line, then waits for the test to create ``gate`` (so the test sees the
    line arrive while the job still runs), then prints another."""
    return (f"name: {name}\nkind: batch\ntarget: {target}\ntimeout: 10m\n{extra}"
            f"run: |\n  echo \"first line $CUDA_VISIBLE_DEVICES\"\n  while [ ! -e {gate} ]; do sleep 0.2; done\n"
            "  echo last line\n")  # fmt: skip


def test_submit_streams_a_local_jobs_log_while_it_runs_and_exits_with_its_outcome(stack, tmp_path):
    gate = tmp_path / "go"
    live = Live(stack, "alice", "submit", str(spec(tmp_path, "streamed", gated("streamed", gate))))
    live.wait_for("[streamed] first line")  # in the terminal while the job waits for the gate
    gate.touch()
    assert live.finish() == 0, "\n".join(live.lines)
    out = "\n".join(live.lines)
    assert "[streamed] last line" in out and "==> streamed: job " in out and " on local" in out
    assert live.lines[-1].startswith("==> streamed: success")
    run = stack.api("GET", f"/api/v2/dags/{NLP}/dagRuns/{live.run_id}")
    assert run["triggering_user_name"] == "alice"  # the user the API authenticated
    assert "submission by alice" in out

    failing = cli(stack, "alice", "submit", str(spec(tmp_path, "failing", "name: failing\nkind: batch\nrun: echo "
                                                      "before; exit 3\ntimeout: 5m\n")))  # fmt: skip
    assert failing.returncode == 1, failing.stdout
    assert "[failing] before" in failing.stdout and "failed: exit code 3" in failing.stdout
    # the retry count is written before it is read: no "XCom not found" error per submitted job
    assert "key='flexorch_retries'" not in (stack.home / "scheduler.log").read_text(errors="replace")


def test_a_slurm_gpu_job_streams_before_it_ends(stack, tmp_path):
    gate = tmp_path / "go"
    text = gated("on-slurm", gate, target="slurm", extra="resources: {gpus: 1}\n")
    live = Live(stack, "alice", "submit", str(spec(tmp_path, "on-slurm", text)))
    live.wait_for("[on-slurm] first line 0")  # Slurm gave it one (fake) GPU
    assert any(" on slurm" in ln and "==> on-slurm: job " in ln for ln in live.lines), live.lines
    gate.touch()
    assert live.finish() == 0, "\n".join(live.lines)


def test_a_failed_job_is_submitted_again_as_its_retries_say(stack, tmp_path):
    mark = tmp_path / "failed-once"
    text = (f"name: flaky\nkind: batch\ntimeout: 5m\nretries: {{count: 1, delay: 1s}}\n"
            f"run: 'if [ -e {mark} ]; then echo second go; else touch {mark}; echo first go; exit 1; fi'\n")  # fmt: skip
    done = cli(stack, "alice", "submit", str(spec(tmp_path, "flaky", text)))
    out = done.stdout
    assert done.returncode == 0, out
    assert out.index("[flaky] first go") < out.index("retry 1 of 1 in 10s") < out.index("[flaky] second go")


def test_detach_reattach_and_cancel_leave_no_job(stack, tmp_path):
    gate = tmp_path / "never"
    live = Live(stack, "alice", "submit", str(spec(tmp_path, "detached", gated("detached", gate))))
    live.wait_for("[detached] first line")
    live.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert live.finish() == 130
    out = "\n".join(live.lines)
    run_id = live.run_id
    assert f"flexorch logs {run_id} --follow" in out and f"flexorch cancel {run_id}" in out
    assert stack.api("GET", f"/api/v2/dags/{NLP}/dagRuns/{run_id}")["state"] == "running"  # still runs

    logs = cli(stack, "alice", "logs", run_id, "--tail", "5")
    assert "[detached] first line" in logs.stdout
    status = cli(stack, "alice", "status", run_id)
    assert "detached" in status.stdout and "local" in status.stdout, status.stdout
    mine = cli(stack, "alice", "status")
    assert run_id in mine.stdout and "alice" in mine.stdout

    # cancel reaches a deferred job through its running trigger's on_kill: wait until the triggerer runs it
    # (a trigger not picked up yet cannot act: README, "Known limits")
    api = Api(Login(stack.url, "alice", password(stack, "alice")))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = [str(e.get("event")) for e in api.log(run_id, "run", 1, 0)]
        if any(ev.startswith("trigger ") and ev.endswith(" starting") for ev in events):
            break
        time.sleep(0.5)
    cancelled = cli(stack, "alice", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "stopped" in cancelled.stdout and f"cancelled run {run_id}" in cancelled.stdout
    results = list((stack.base / "runs").glob("*/*/result.json"))  # type: ignore[attr-defined]
    states = [json.loads(p.read_text())["state"] for p in results if "last line" not in (p.parent / "log").read_text()
              and "first line" in (p.parent / "log").read_text()]  # fmt: skip
    deadline = time.time() + 30
    while "cancelled" not in states and time.time() < deadline:
        time.sleep(0.5)
        states = [json.loads(p.read_text())["state"] for p in (stack.base / "runs").glob("*/*/result.json")]  # type: ignore[attr-defined]
    assert "cancelled" in states  # the job was stopped, not left running
    alive = subprocess.run(["pgrep", "-f", str(gate)], capture_output=True, text=True).stdout.split()
    assert alive == [], "the job's processes are still running"


def test_a_pipeline_runs_its_steps_in_order_and_skips_after_a_failure(stack, tmp_path):
    text = ("name: flow\nkind: pipeline\ntarget: local\ntimeout: 5m\nsteps:\n"
            "  - {name: report, after: [train], run: echo report}\n"
            "  - {name: prep, run: echo prepared}\n"
            "  - {name: train, after: prep, run: 'echo training; exit 2'}\n")  # fmt: skip
    done = cli(stack, "alice", "submit", str(spec(tmp_path, "flow", text)))
    out = done.stdout
    assert done.returncode == 1, out
    assert out.index("[prep] prepared") < out.index("[train] training")
    assert "[report] step report does not run: a step it comes after did not succeed" in out
    ok = cli(stack, "alice", "submit", str(spec(tmp_path, "flow", text)), "--step", "prep")
    assert ok.returncode == 0 and "[prep] prepared" in ok.stdout and "[train]" not in ok.stdout


def test_spec_errors_are_caught_here_and_again_on_the_server(stack, tmp_path):
    before = len(stack.api("GET", f"/api/v2/dags/{NLP}/dagRuns?limit=1000")["dag_runs"])
    bad = spec(tmp_path, "bad", "name: bad\nkind: batch\nrun: echo\nresorces: {gpus: 1}\n")
    local = cli(stack, "alice", "submit", str(bad))
    assert (
        local.returncode == 1 and local.stderr.strip() == f"{bad}:4: resorces: unknown key; did you mean 'resources'?"
    )
    assert len(stack.api("GET", f"/api/v2/dags/{NLP}/dagRuns?limit=1000")["dag_runs"]) == before

    api = Api(Login(stack.url, "alice", password(stack, "alice")))
    raw = api.trigger("raw-bad", {"spec": bad.read_text(), "step": None, "set": []})  # a client that skips the check
    state = RunFollower(api, raw["dag_run_id"], lambda line: None).follow(timeout=120)
    assert state == "failed"
    log = "\n".join(str(e.get("event")) for e in api.log("raw-bad", "check", 1))
    assert "<submitted spec>:4: resorces: unknown key" in log

    huge = {"spec": "name: x\nkind: batch\nrun: " + "x" * 300_000 + "\n", "step": None, "set": []}
    with pytest.raises(Exception) as refused:
        api.trigger("too-big", huge)
    assert "400" in str(refused.value) or "422" in str(refused.value) or "maxLength" in str(refused.value)


def test_the_policy_refuses_with_each_rule_and_the_numbers(stack, tmp_path):
    text = ("name: greedy\nkind: training\ntarget: [slurm, ssh]\ntimeout: 3h\nrun: 'echo {{ var.value.x }}'\n"
            "resources: {gpus: 4}\n")  # fmt: skip
    refused = cli(stack, "alice", "submit", str(spec(tmp_path, "greedy", text)))
    assert refused.returncode == 1
    assert "templates may use" in refused.stderr  # caught before anything is sent
    text = text.replace("{{ var.value.x }}", "hi") + "secrets: {TOKEN: 'variable:prod_token'}\n"
    refused = cli(stack, "alice", "submit", str(spec(tmp_path, "greedy", text)))
    out = refused.stdout
    assert refused.returncode == 1, out
    for rule in (
        "target ssh is not allowed (allowed: local, slurm)",
        "at most 2 GPUs per job; this job asks 4",
        "timeout 3h is longer than the team's 1h",
        "secrets.TOKEN: variable:prod_token is not a reference",
    ):
        assert f"[check] refused: team nlp: {rule}" in out, out  # fmt: skip
    nobody = cli(stack, "admin", "submit", str(spec(tmp_path, "ok", "name: ok\nkind: batch\nrun: echo\n")))
    assert nobody.returncode == 1 and "user 'admin' is in no team of the policy" in nobody.stderr


def test_the_gpu_hour_budget_counts_real_runs_and_concurrency_is_limited(stack, tmp_path):
    gate = tmp_path / "go"
    text = gated("budgeted", gate, target="slurm", extra="resources: {gpus: 1}\n")
    first = Live(stack, "bob", "submit", str(spec(tmp_path, "budgeted", text)))
    first.wait_for("[budgeted] first line")
    second = cli(stack, "bob", "submit", str(spec(tmp_path, "budgeted", text)))
    assert "team budget: 1 of 1 concurrent runs are live" in second.stdout, second.stdout
    time.sleep(20)  # the job holds its GPU a while: 1 GPU × 20 s of the 0.17 GPU-hours
    gate.touch()
    assert first.finish() == 0, "\n".join(first.lines)
    third = cli(stack, "bob", "submit", str(spec(tmp_path, "budgeted", text)))
    assert third.returncode == 1
    assert "[check] refused: team budget: 0.01 of 0.17 GPU-hours used today; this submission asks up to 1 GPUs × 10m" \
        in third.stdout, third.stdout  # fmt: skip
    usage = cli(stack, "bob", "status", "--team")  # from the ledger, through the api-server's flexorch plugin
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.splitlines()[1].split()[:5] == ["budget", "(you)", "0.01", "of", "0.17"], usage.stdout
    req = urllib.request.Request(f"{stack.url}/flexorch/api/usage")
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(req, timeout=30)
    assert anonymous.value.code in (401, 403)  # the plugin's routes need a login too


def test_logins_and_permissions_are_refused_in_one_line(stack, tmp_path):
    job = str(spec(tmp_path, "ok", "name: ok\nkind: batch\nrun: echo\n"))
    wrong = cli(stack, "alice", "submit", job, FLEXORCH_PASSWORD="not-it")
    assert wrong.returncode == 1 and wrong.stderr.strip().endswith(
        "refused the login of 'alice': wrong user or password"
    )
    viewer = cli(stack, "eve", "submit", job)
    assert viewer.returncode == 1 and "may not trigger the flexorch-submit-nlp DAG" in viewer.stderr
    gone = cli(stack, "alice", "submit", job, FLEXORCH_API_URL="http://127.0.0.1:9")
    assert gone.returncode == 1 and "cannot reach the Airflow API at http://127.0.0.1:9" in gone.stderr
    for r in (wrong, viewer, gone):
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    req = urllib.request.Request(f"{stack.url}/api/v2/dags/{NLP}/dagRuns", method="POST",
                                 data=json.dumps({"logical_date": None, "conf": {}}).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(req, timeout=30)
    assert anonymous.value.code in (401, 403)


def test_a_token_that_expires_while_following_is_renewed(stack, tmp_path):
    gate = tmp_path / "go"
    api = Api(Login(stack.url, "alice", password(stack, "alice")))
    run = api.trigger("renewal", {"spec": gated("renewal", gate), "step": None, "set": []})
    lines: list[str] = []
    follower = RunFollower(api, run["dag_run_id"], lines.append)
    deadline = time.monotonic() + 60
    while api.renewed == 0 and time.monotonic() < deadline:  # tokens live 20 s on this stack
        follower.step()
        time.sleep(1)
    gate.touch()
    assert follower.follow(timeout=120) == "success"
    assert api.renewed >= 1 and "[renewal] last line" in lines


# --- attacks: a user-role account with a laptop, against the server's own checks -----------------
def _as(stack: AirflowStack, user: str) -> Api:
    return Api(Login(stack.url, user, password(stack, user)))


def _ended(stack: AirflowStack, run_id: str, timeout: float = 120) -> str:
    def state() -> str | None:
        s = stack.api("GET", f"/api/v2/dags/{NLP}/dagRuns/{run_id}")["state"]
        return s if s in ("success", "failed") else None

    return str(stack.wait_for(state, timeout, f"run {run_id} to end"))


def _log(stack: AirflowStack, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
    events = Api(Login(stack.url, "admin", password(stack, "admin")), dag_id=NLP).log(
        run_id, task_id, try_number, map_index
    )
    return "\n".join(str(e.get("event", "")) for e in events)


ATTACKS = {  # the spec a user sends straight to the REST API (no laptop check), and how the server refuses it
    "code-on-the-worker": (
        "name: a1\nkind: batch\ntarget: local\ntimeout: 5m\nrun: \"echo {{ macros.uuid.os.popen('id -un').read() }}\"\n",
        "<submitted spec>:5: run: macros.uuid is not available in a submitted spec",
    ),
    "read-the-policy": (
        "name: a2\nkind: batch\ntarget: local\ntimeout: 5m\nrun: \"{% include 'flexorch_policy.yaml' %}\"\n",
        "<submitted spec>:5: run: {% include %} is not allowed in a submitted spec",
    ),
    "worker-environment": (
        'name: a3\nkind: batch\ntarget: local\ntimeout: 5m\nrun: echo x\nenv: {K: "{{ macros.uuid.os.environ }}"}\n',
        "env.K: macros.uuid is not available",
    ),
    "sbatch-option-smuggling": (
        "name: a4\nkind: batch\ntarget: slurm\ntimeout: 5m\nrun: echo x\n"
        "slurm: {options: {nice: '0 --partition=debug --gres=gpu:8'}}\n",
        "sbatch option 'nice' must be one word",
    ),
    "gpus-through-sbatch-options": (
        "name: a5\nkind: batch\ntarget: slurm\ntimeout: 5m\nrun: echo x\nslurm: {options: {gpus-per-node: 8}}\n",
        "team nlp: at most 2 GPUs per job; this job asks 8",
    ),
    "another-teams-login-node": (
        "name: a6\nkind: batch\ntarget: slurm\ntimeout: 5m\nrun: echo x\nslurm: {connection: budget_login}\n",
        "team nlp: slurm.connection budget_login: the team has no connections rule",
    ),
    "mount-the-host": (
        "name: a8\nkind: batch\ntarget: local\ntimeout: 5m\nrun: ls /host\nimage: busybox:1\n"
        "container: {mounts: [{host: /, path: /host}]}\n",
        "team nlp: container.mounts host path /: the team has no mount_paths rule",
    ),
    "gpus-through-replicas": (
        "name: nlp-a9\nkind: service\ntarget: local\ntimeout: 5m\nrun: sleep 1\nreplicas: 50\nresources: {gpus: 1}\n",
        "team nlp: at most 2 GPUs per job; this job asks 50",
    ),
    "an-unheld-gpu-pool": (
        "name: a10\nkind: batch\ntarget: local\ntimeout: 5m\nrun: echo x\ngpu_pool: lab\nresources: {gpus: 1}\n",
        "team nlp: gpu_pool lab: a submitted job cannot hold Airflow pool slots",
    ),
    "a-reservation-of-its-own": (
        "name: a11\nkind: batch\ntarget: slurm\ntimeout: 5m\nrun: echo x\nslurm: {options: {reservation: maint}}\n",
        "team nlp: slurm.options reservation is not an option the team's submissions may set",
    ),
    "the-gpu-variables": (
        "name: a7\nkind: batch\ntarget: local\ntimeout: 5m\nrun: echo x\nenv: {NVIDIA_VISIBLE_DEVICES: all}\n",
        "NVIDIA_VISIBLE_DEVICES is set by flexorch from resources.gpus",
    ),
}


def test_attacks_sent_straight_to_the_api_are_refused_by_the_servers_check(stack):
    alice = _as(stack, "alice")
    runs = {}
    for name, (text, _) in ATTACKS.items():
        runs[name] = alice.trigger(f"attack__{name}__{time.time_ns()}", {"spec": text, "step": None, "set": []})
    for name, (_, refusal) in ATTACKS.items():
        run_id = runs[name]["dag_run_id"]
        assert _ended(stack, run_id) == "failed", name
        assert refusal in _log(stack, run_id, "check"), name
        tis = {t["task_id"]: t.get("state") for t in alice.task_instances(run_id)}
        assert tis.get("check") == "failed" and tis.get("run") in (None, "upstream_failed"), (name, tis)


def test_an_edited_plan_and_a_cleared_run_task_are_checked_again(stack, tmp_path):
    """The plan in check's XCom is editable by the user who triggered the run; a cleared run task runs
    without check. Both are held to the conf and the policy: nothing of the edit runs."""
    marker = tmp_path / "ran-the-edited-plan"
    honest = cli(stack, "alice", "submit", str(spec(tmp_path, "honest", "name: honest\nkind: batch\ntimeout: 5m\n"
                                                     "run: echo honest\n")))  # fmt: skip
    assert honest.returncode == 0, honest.stdout + honest.stderr
    run_id = (
        next(ln for ln in honest.stdout.splitlines() if ln.startswith("==> submitted ")).split(" as run ")[1].split()[0]
    )
    alice = _as(stack, "alice")
    plan = alice.xcom(run_id, "check", "return_value")
    edited = [dict(plan[0], spec={**plan[0]["spec"], "run": f"touch {marker}"})]
    alice.call("PATCH", f"/api/v2/dags/{NLP}/dagRuns/{run_id}/taskInstances/check/xcomEntries/return_value",
               {"value": edited, "map_index": -1})  # fmt: skip
    alice.call("POST", f"/api/v2/dags/{NLP}/clearTaskInstances",
               {"dry_run": False, "dag_run_id": run_id, "task_ids": ["run"], "only_failed": False})  # fmt: skip
    assert _ended(stack, run_id) == "failed"
    assert not marker.exists()
    assert "the run task's spec differ from what the run's conf and the policy give" in _log(stack, run_id, "run", 2, 0)


def test_another_teams_submitted_job_is_not_listed_to_it(stack, tmp_path):
    gate = tmp_path / "go"
    live = Live(stack, "alice", "submit", str(spec(tmp_path, "private-job", gated("private-job", gate))))
    try:
        live.wait_for("[private-job] first line")

        def listed(user: str) -> bool:
            jobs = _as(stack, user).flexorch("jobs")["jobs"]
            return any(j["dag_id"] == NLP and j["run_id"] == live.run_id for j in jobs)

        assert listed("alice") and listed("admin") and not listed("bob")
        usage = _as(stack, "bob").usage()
        assert [t["team"] for t in usage["teams"]] == ["budget"]  # bob's team only: no other team's members
    finally:
        gate.touch()
        assert live.finish() == 0, "\n".join(live.lines)


def test_a_user_of_another_team_triggering_a_teams_submit_dag_is_refused_by_its_check(stack):
    """The simple auth manager lets every user trigger every DAG: a team's own submit DAG still runs
    only its team's submissions (with per-DAG permissions, Airflow refuses the trigger already:
    tests/e2e/test_team_dags.py)."""
    alice = _as(stack, "alice")
    assert alice.dag_id == NLP and _as(stack, "bob").dag_id == BUDGET  # what `flexorch submit` picks
    text = "name: sneaky\nkind: batch\ntarget: slurm\ntimeout: 5m\nrun: echo x\n"
    run = alice.call("POST", f"/api/v2/dags/{BUDGET}/dagRuns",
                     {"dag_run_id": f"sneaky-{time.time_ns()}", "logical_date": None,
                      "conf": {"spec": text, "step": None, "set": []}})  # fmt: skip
    run_id = run["dag_run_id"]

    def ended() -> str | None:
        s = stack.api("GET", f"/api/v2/dags/{BUDGET}/dagRuns/{run_id}")["state"]
        return s if s in ("success", "failed") else None

    assert stack.wait_for(ended, 120, "the run to end") == "failed"
    events = stack.task_log_entries(BUDGET, run_id, "check", 1)
    log = "\n".join(str(e.get("event", "")) for e in events)
    assert "user alice is in team nlp, and flexorch-submit-budget runs team budget's submissions" in log, log


def _pid_alive(pid: int) -> bool:
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def _service(name: str, marker: Path, timeout: str) -> str:
    return (f"name: {name}\nkind: service\ntarget: local\nreplicas: 1\ntimeout: {timeout}\n"
            f"run: 'echo $$ > {marker}; exec sleep 900'\n")  # fmt: skip


def test_a_submitted_service_lives_for_its_timeout_or_until_its_run_is_cancelled(stack, tmp_path):
    """A submitted service is named after its team, holds its run (live, in the ledger) for its
    lifetime, its timeout, and is undeployed when that ends or when the run is cancelled."""
    wrong = cli(stack, "alice", "submit", str(spec(tmp_path, "svc", _service("web", tmp_path / "x", "20s"))))
    assert "a submitted service is named after its team: call it nlp-web" in wrong.stdout, wrong.stdout

    marker = tmp_path / "brief.pid"
    brief = Live(stack, "alice", "submit", str(spec(tmp_path, "brief", _service("nlp-brief", marker, "25s"))))
    brief.wait_for("deployed on local; it runs for its timeout, 25s")
    pid = int(marker.read_text())
    assert _pid_alive(pid)
    usage = _as(stack, "alice").usage()["teams"][0]
    assert usage["team"] == "nlp" and usage["live_runs"] >= 1  # the service's run is live while it runs
    assert brief.finish(timeout=180) == 0, "\n".join(brief.lines)
    assert "its lifetime (timeout) has ended: undeploying it" in "\n".join(brief.lines)
    stack.wait_for(lambda: not _pid_alive(pid), 30, "the replica to stop")

    marker = tmp_path / "long.pid"
    long = Live(stack, "alice", "submit", str(spec(tmp_path, "long", _service("nlp-long", marker, "30m"))))
    long.wait_for("deployed on local; it runs for its timeout, 1800s")
    pid = int(marker.read_text())
    api = _as(stack, "alice")
    stack.wait_for(  # the lease trigger runs in the triggerer: a cancel reaches it through its on_kill
        lambda: any(str(e.get("event", "")).startswith("trigger ") for e in api.log(long.run_id, "run", 1, 0)),
        60, "the lease trigger to start")  # fmt: skip
    cancelled = cli(stack, "alice", "cancel", long.run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    stack.wait_for(lambda: not _pid_alive(pid), 60, "the cancelled service's replica to stop")
    long.finish(timeout=60)


CODE_SPEC = """\
name: {name}
kind: batch
target: {target}
timeout: 10m
code: {code}
run: python3 train.py
"""
TRAIN = 'import os\nprint("epoch 1 of", open("lib/steps.txt").read().strip(), "digest", os.environ["FLEXORCH_CODE_DIGEST"][:12])\n'


def test_code_beside_the_spec_travels_once_and_the_edit_shows_on_slurm_and_the_worker(stack, tmp_path):
    """The laptop's folder (its 100 MB git-ignored checkpoint left out) is uploaded once per content,
    kept where every worker reads it, and runs on Slurm and on the worker; an edit is sent again."""
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    (project / "train.py").write_text(TRAIN)
    (project / "lib" / "steps.txt").write_text("100\n")
    (project / ".gitignore").write_text("checkpoints/\n")
    (project / "checkpoints").mkdir()
    with open(project / "checkpoints" / "big.pt", "wb") as f:
        f.truncate(100 * 2**20)
    path = project / "train.yaml"
    path.write_text(CODE_SPEC.format(name="code-train", target="slurm", code="."))
    first = cli(stack, "alice", "submit", str(path))
    out = first.stdout
    assert first.returncode == 0, out + first.stderr
    sent = [ln for ln in out.splitlines() if ln.startswith("==> code ")]
    assert len(sent) == 1 and ": 4 files, " in sent[0] and " sent " in sent[0], out  # not the checkpoint
    assert "[code-train] epoch 1 of 100 digest" in out and "the login node" not in out
    digest = sent[0].split()[2].rstrip(":")
    assert f"digest {digest}" in out

    again = cli(stack, "alice", "submit", str(path))  # nothing changed: nothing sent
    assert again.returncode == 0 and "already on the server, nothing sent" in again.stdout, again.stdout
    assert "already on this machine (the Slurm client), nothing sent" in again.stdout

    (project / "lib" / "steps.txt").write_text("250\n")
    path.write_text(CODE_SPEC.format(name="code-train", target="local", code="."))
    edited = cli(stack, "alice", "submit", str(path))
    assert edited.returncode == 0 and " sent " in edited.stdout and "epoch 1 of 250" in edited.stdout, edited.stdout

    bare = cli(stack, "alice", "submit", "--no-code", str(path))  # runs without it, in its run folder
    assert bare.returncode == 1 and "==> code " not in bare.stdout and "train.py" in bare.stdout, bare.stdout


def test_an_oversize_folder_is_refused_before_anything_is_sent(stack, tmp_path):
    project = tmp_path / "big"
    project.mkdir()
    (project / "train.py").write_text("print(1)\n")
    (project / "weights.bin").write_bytes(b"w" * (3 * 2**20))
    path = project / "big.yaml"
    path.write_text(CODE_SPEC.format(name="code-big", target="local", code="{path: ., max_size: 2Mi}"))
    before = len(Api(Login(stack.url, "alice", password(stack, "alice")), dag_id=NLP).runs())
    refused = cli(stack, "alice", "submit", str(path))
    assert refused.returncode != 0
    assert "over code.max_size (2.0 MiB); the largest: weights.bin (3.0 MiB)" in refused.stderr + refused.stdout
    assert len(Api(Login(stack.url, "alice", password(stack, "alice")), dag_id=NLP).runs()) == before


def test_code_uploads_are_checked_and_only_for_who_may_submit(stack, tmp_path):
    """Straight to the API: a bundle whose files do not give its digest, a hostile tar, and a viewer."""
    import io
    import tarfile

    from flexorch_provider.code import collect

    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "train.py").write_text("print('honest')\n")
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "train.py").write_text("print('swapped')\n")
    honest, evil = collect(tmp_path / "ok", [], 2**20), collect(tmp_path / "evil", [], 2**20)
    alice = _as(stack, "alice")
    with pytest.raises(Exception, match="it was changed on the way"):
        alice.code_put(honest.digest, evil.tarball())
    assert not alice.code_has(honest.digest)
    escape = io.BytesIO()
    with tarfile.open(fileobj=escape, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../dags/evil.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(Exception, match="not a plain file inside it"):
        alice.code_put(honest.digest, escape.getvalue())
    with pytest.raises(Exception, match="permission denied: you may not submit jobs here"):
        _as(stack, "eve").code_put(honest.digest, honest.tarball())  # a viewer
    assert alice.code_put(honest.digest, honest.tarball())["stored"] and alice.code_has(honest.digest)


def test_a_laptop_edit_reaches_an_ssh_host_through_submit_once(stack, tmp_path):
    """carol's team runs on one fleet host (its connection's own): the edit shows, the unchanged
    folder is sent neither to the server nor to the host again."""
    host = stack.fleet.hosts[1]
    project = tmp_path / "on-ssh"
    (project / "lib").mkdir(parents=True)
    (project / "train.py").write_text(TRAIN)
    (project / "lib" / "steps.txt").write_text("100\n")
    path = project / "train.yaml"
    path.write_text(CODE_SPEC.format(name="code-ssh", target="ssh", code=".") + f"ssh: {{connection: {CODE_HOST}}}\n")
    first = cli(stack, "carol", "submit", str(path))
    assert first.returncode == 0 and "[code-ssh] epoch 1 of 100 digest" in first.stdout, first.stdout + first.stderr
    # sent to the server, then to the host (the connection's own host, so named)
    assert ": sent " in first.stdout and "B to <connection host>" in first.stdout, first.stdout
    assert len(list((host.home / ".flexorch" / "code").iterdir())) >= 1
    again = cli(stack, "carol", "submit", str(path))
    assert again.returncode == 0 and "already on the server, nothing sent" in again.stdout, again.stdout
    assert "already on <connection host>, nothing sent" in again.stdout, again.stdout
    (project / "lib" / "steps.txt").write_text("7\n")
    edited = cli(stack, "carol", "submit", str(path))
    assert edited.returncode == 0 and "[code-ssh] epoch 1 of 7 digest" in edited.stdout, edited.stdout
