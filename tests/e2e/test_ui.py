"""The flexorch page and its API in a real api-server (real logins), with real jobs running on the
local target, an ssh fleet host and the real Slurm (fake GPUs), a service on two fleet hosts, and
the page rendered in headless Chromium with a logged-in session (screenshot kept as an artifact).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flexorch_provider.dag_factory.folder import CACHE_DIR_ENV, SPECS_DIR_ENV
from flexorch_provider.dev.stack import LOADER_FILE, loader_source
from tests.conftest import FLEET_CONN
from tests.e2e.stack import AirflowStack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e-ui"
FLEXORCH = str(Path(sys.executable).parent / "flexorch")
L4_PAIR = ("0, GPU-0b1c2d3e-0000-4000-8000-00000000aa01, NVIDIA L4, 23034, 0, 0\n"
           "1, GPU-0b1c2d3e-0000-4000-8000-00000000aa02, NVIDIA L4, 23034, 0, 0\n")  # fmt: skip
TOKEN = "ui-secret-7f3a9c"
SLURM_LINK = "http://slurm.example/job/{slurm_job_id}"
TICKER = "import os, time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n, 'token=' + os.environ['TOKEN'], flush=True)\n    time.sleep(0.5)\n"


def spec_files(specs: Path, fleet: Any) -> None:
    h1, h2, h3 = fleet.hosts[:3]
    (specs / "gpu_pools.yaml").write_text(
        textwrap.dedent(f"""\
        lab:
          source: ssh
          connection: {FLEET_CONN}
          hosts: [{h1.entry}, {h2.entry}, "{h1.entry}:1"]
        cluster:
          source: slurm
          partition: gpu
    """)
    )
    (specs / "ui-local.yaml").write_text(
        "name: ui-local\nkind: batch\ntarget: local\nrun: echo local-started; sleep 150\n"
    )
    (specs / "ui-ssh.yaml").write_text(
        f"name: ui-ssh\nkind: batch\ntarget: ssh\nssh: {{connection: {FLEET_CONN}, hosts: [{h3.entry}]}}\n"
        "run: echo ssh-started; sleep 151\n"
    )
    (specs / "ui-slurm.yaml").write_text(
        "name: ui-slurm\nkind: batch\ntarget: slurm\nresources: {gpus: {count: 2, type: a100}}\n"
        "run: echo slurm-started; sleep 152\n"
    )
    svc = {"name": "ui-web", "kind": "service", "target": "ssh", "replicas": 2, "run": ["python3", "-c", TICKER],
           "secrets": {"TOKEN": {"source": "variable", "name": "flex_ui_token"}},
           "ssh": {"connection": FLEET_CONN, "hosts": [h1.entry, h2.entry]}}  # fmt: skip
    (specs / "ui-web.yaml").write_text(json.dumps(svc))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ssh_fleet, slurm_cluster):
    base = tmp_path_factory.mktemp("ui-stack")
    dags, specs = base / "dags", base / "specs"
    dags.mkdir()
    specs.mkdir()
    (dags / LOADER_FILE).write_text(loader_source())
    spec_files(specs, ssh_fleet)
    h1, h2 = ssh_fleet.hosts[:2]
    h1.fake_nvidia_smi(L4_PAIR)
    h2.fake_nvidia_smi(L4_PAIR)
    s = AirflowStack(
        base / "home",
        dags,
        {
            SPECS_DIR_ENV: str(specs),
            CACHE_DIR_ENV: str(base / "cache"),
            "FLEXORCH_RUN_DIR": str(base / "runs"),
            "FLEXORCH_GPU_POOLS": str(specs / "gpu_pools.yaml"),
            "FLEXORCH_UI_TTL": "1",
            "FLEXORCH_UI_POOL_TTL": "1",
            "FLEXORCH_SUBMIT_DAG": "0",
            f"AIRFLOW_CONN_{FLEET_CONN.upper()}": ssh_fleet.connection_json(),
            "AIRFLOW__FLEXORCH__LINK_TEMPLATES": json.dumps({"slurm": SLURM_LINK}),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        },
        all_admins=False,
    )
    s.start()
    runs: list[tuple[str, str, str]] = []
    try:
        for dag_id in ("ui-local", "ui-ssh", "ui-slurm", "ui-web"):
            s.wait_dag(dag_id, timeout=120)
        s.cli("variables", "set", "flex_ui_token", TOKEN)
        s.runs = runs  # type: ignore[attr-defined]
        yield s
    finally:
        for dag_id, run_id, task_id in runs:  # stop what still runs (mark failed cancels the job)
            try:
                s.api(
                    "PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", {"new_state": "failed"}
                )
            except Exception:
                pass
        try:
            run_id = s.trigger("ui-web", conf={"action": "undeploy"})
            s.wait_for(lambda: s.dag_run("ui-web", run_id)["state"] in ("success", "failed"), 120, "the undeploy")
        except Exception:
            pass
        listed = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout.split("\n")
        for job_id, _, name in (line.partition(" ") for line in listed):
            if name.startswith("flexorch-ui-slurm"):
                subprocess.run(["scancel", job_id], capture_output=True)
        s.stop()
        s.save_logs(ARTIFACTS)
        h1.fake_nvidia_smi(None)
        h2.fake_nvidia_smi(None)


def token(stack: AirflowStack) -> str:
    header = stack._auth_header()
    assert header is not None
    return header.removeprefix("Bearer ")


def get(stack: AirflowStack, path: str, auth: bool = True) -> Any:
    req = urllib.request.Request(stack.url + path)
    if auth:
        req.add_header("Authorization", f"Bearer {token(stack)}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
    return json.loads(body) if resp.headers.get_content_type() == "application/json" else body.decode()


def cli_env(stack: AirflowStack) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "FLEXORCH_API_URL": stack.url, "FLEXORCH_USER": "admin",
            "FLEXORCH_PASSWORD": stack.password() or "", "FLEXORCH_CONFIG": str(stack.home / "login-ui.json")}  # fmt: skip


def test_the_page_and_its_api_need_a_login(stack):
    for path in ("/flexorch/", "/flexorch/api/overview", "/flexorch/api/jobs", "/flexorch/api/pools",
                 "/flexorch/api/services/ui-web/logs", "/flexorch/jobs/a/b/c"):  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as e:
            get(stack, path, auth=False)
        assert e.value.code in (401, 403), path
    assert "flexorch" in get(stack, "/flexorch/")  # with a login: the page


def jobs_by_dag(stack: AirflowStack) -> dict[str, dict[str, Any]]:
    return {j["dag_id"]: j for j in get(stack, "/flexorch/api/jobs")["jobs"]}


def test_running_jobs_on_every_backend_with_links_and_busy_gpus(stack, ssh_fleet):
    h3 = ssh_fleet.hosts[2]
    tasks = {"ui-local": "batch", "ui-ssh": "batch", "ui-slurm": "batch"}
    run_ids = {}
    for dag_id, task_id in tasks.items():
        run_ids[dag_id] = stack.trigger(dag_id)
        stack.runs.append((dag_id, run_ids[dag_id], task_id))  # type: ignore[attr-defined]

    seen: list[Any] = []

    def all_running() -> dict[str, dict[str, Any]] | None:
        found = jobs_by_dag(stack)
        seen[:] = [found]
        return found if all(found.get(d, {}).get("state") == "running" for d in tasks) else None

    try:
        found = stack.wait_for(all_running, 150, "three running jobs on the flexorch page")
    except TimeoutError as e:
        raise AssertionError(f"{e}; the page's jobs: {json.dumps(seen, indent=1)}") from None
    local, ssh, slurm = found["ui-local"], found["ui-ssh"], found["ui-slurm"]
    assert (local["target"], ssh["target"], slurm["target"]) == ("local", "ssh", "slurm")
    assert ssh["where"]["host"] == h3.address and ssh["job_id"].endswith(f"@{h3.entry}")
    assert slurm["job_id"].isdigit() and slurm["reason"] == "running on localhost" and slurm["gpus"] == 2
    assert local["where"]["run_dir"].startswith(str(stack.home.parent / "runs"))
    assert all(
        j["run_id"] == run_ids[j["dag_id"]] and j["ti_url"].startswith(stack.url + "/dags/") for j in found.values()
    )

    # the extra links, while the jobs still run: the Slurm template, the page for the others
    def links(dag_id: str) -> dict[str, Any]:
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_ids[dag_id])}/taskInstances/{tasks[dag_id]}/links"
        )
        return dict(get(stack, path)["extra_links"])

    assert links("ui-slurm")["Remote job"] == SLURM_LINK.format(slurm_job_id=slurm["job_id"])
    local_link = links("ui-local")["Remote job"]
    assert local_link.startswith(f"{stack.url}/flexorch/jobs/ui-local/")
    assert stack.ti("ui-local", run_ids["ui-local"], "batch")["state"] in ("running", "deferred")
    detail = get(stack, local_link.removeprefix(stack.url).replace("/flexorch/jobs/", "/flexorch/api/jobs/", 1))
    assert detail["job_id"] == local["job_id"] and "local-started" in detail["log_tail"]
    ssh_detail = get(
        stack, links("ui-ssh")["Remote job"].removeprefix(stack.url).replace("/flexorch/", "/flexorch/api/", 1)
    )
    assert "ssh-started" in ssh_detail["log_tail"] and ssh_detail["where"]["run_dir"]

    # GPU pools: the Slurm job holds 2 of the 4 fake a100s; the ssh pool names the host it cannot reach
    pools = {p["pool"]: p for p in get(stack, "/flexorch/api/pools")["pools"]}
    cluster, lab = pools["cluster"], pools["lab"]
    assert (cluster["total"], cluster["free"]) == (4, 2), cluster
    assert cluster["nodes"][0]["models"] == ["A100"]
    nodes = {n["name"]: n for n in lab["nodes"]}
    h1, h2 = ssh_fleet.hosts[:2]
    assert nodes[h1.entry]["models"] == ["L4"] and nodes[h1.entry]["free"] == 2 and nodes[h2.entry]["state"] == "up"
    # per free GPU, as `flexorch gpus` shows it (22Gi there; the page said 45.0 GiB, the two GPUs summed)
    assert nodes[h1.entry]["free_memory_per_gpu_mib"] == [23034, 23034]
    assert nodes[f"{h1.entry}:1"]["state"] == "unreachable" and nodes[f"{h1.entry}:1"]["detail"]
    # still listed once their tasks deferred (Airflow then stores every extra link's XCom, empty ones too)
    stack.wait_for(lambda: all(stack.ti(d, run_ids[d], t)["state"] == "deferred" for d, t in tasks.items()), 90,
                   "the three tasks deferred")  # fmt: skip
    assert {d for d, j in jobs_by_dag(stack).items() if j["state"] == "running"} >= set(tasks)
    # filters
    assert {j["dag_id"] for j in get(stack, "/flexorch/api/jobs?target=slurm")["jobs"]} == {"ui-slurm"}
    # the same list from a laptop
    out = subprocess.run([FLEXORCH, "status", "--jobs"], env=cli_env(stack), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert slurm["job_id"] in out.stdout and h3.entry in out.stdout and "running on localhost" in out.stdout
    assert get(stack, "/flexorch/api/pools?pool=lab")["pools"][0]["pool"] == "lab"


def test_the_page_in_chromium_shows_pools_jobs_and_hosts(stack, ssh_fleet):
    from playwright.sync_api import sync_playwright

    found = jobs_by_dag(stack)
    slurm_id, ssh_host = found["ui-slurm"]["job_id"], ssh_fleet.hosts[2].address
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_cookies([{"name": "_token", "value": token(stack), "url": stack.url}])
            page = context.new_page()
            page.goto(stack.url + "/flexorch/")
            expected = ["GPU pools", "lab", "cluster", "ui-local", "ui-ssh", "ui-slurm", slurm_id, ssh_host,
                        "running on localhost", "unreachable", "free memory per GPU", "22Gi"]  # fmt: skip
            try:
                page.wait_for_function("(want) => want.every((w) => document.body.innerText.includes(w))",
                                       arg=expected, timeout=30000)  # fmt: skip
            finally:
                text = page.inner_text("body")
                (ARTIFACTS / "flexorch-page.txt").write_text(text)
            page.screenshot(path=str(ARTIFACTS / "flexorch-page.png"), full_page=True)
            # it refreshes itself: the status line changes without a reload
            first = page.inner_text("#status")
            page.wait_for_function("(t) => document.getElementById('status').innerText !== t", arg=first, timeout=15000)
            page.select_option("#filter-target", "slurm")
            page.wait_for_function("(h) => !document.body.innerText.includes(h)", arg=ssh_host, timeout=15000)
            assert slurm_id in page.inner_text("body")
        finally:
            browser.close()
    assert all(w in text for w in expected), [w for w in expected if w not in text]
    # the page is in the Airflow UI's navigation
    plugins = get(stack, "/api/v2/plugins")["plugins"]
    views = [v for p in plugins if p["name"] == "flexorch" for v in p["external_views"]]
    assert {v["url_route"] for v in views} == {"flexorch", "flexorch-job"}


def test_gpus_are_free_again_after_the_job_ends(stack):
    run_id = next(r for d, r, _ in stack.runs if d == "ui-slurm")  # type: ignore[attr-defined]
    stack.api("PATCH", f"/api/v2/dags/ui-slurm/dagRuns/{run_id}/taskInstances/batch", {"new_state": "failed"})

    def freed() -> bool:
        cluster = next(p for p in get(stack, "/flexorch/api/pools")["pools"] if p["pool"] == "cluster")
        return cluster["free"] == 4

    stack.wait_for(freed, 90, "the Slurm job's GPUs to be free on the page")
    assert "ui-slurm" not in jobs_by_dag(stack)


def service_logs(stack: AirflowStack, query: str = "") -> dict[str, Any]:
    return dict(get(stack, "/flexorch/api/services/ui-web/logs" + query))


def test_a_services_replicas_and_their_logs(stack, ssh_fleet):
    h1, h2 = ssh_fleet.hosts[:2]
    run_id = stack.trigger("ui-web")
    stack.wait_for(lambda: stack.dag_run("ui-web", run_id)["state"] in ("success", "failed"), 180, "the deploy")
    assert stack.dag_run("ui-web", run_id)["state"] == "success"
    svc = get(stack, "/flexorch/api/services/ui-web")
    assert (svc["desired"], svc["running"], svc["healthy"]) == (2, 2, 2), svc
    assert {r["host"] for r in svc["replicas"]} == {h1.entry, h2.entry} and len(svc["revisions"]) == 1
    links = get(stack, f"/api/v2/dags/ui-web/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/deploy/links")
    assert links["extra_links"]["Service"] == f"{stack.url}/flexorch/services/ui-web"

    def both_logging() -> dict[str, Any] | None:
        out = service_logs(stack, "?tail=3")
        return out if len(out["replicas"]) == 2 and all(r["lines"] for r in out["replicas"]) else None

    first = stack.wait_for(both_logging, 30, "lines from both replicas")
    assert len(first["replicas"]) == 2 and all(len(r["lines"]) <= 3 for r in first["replicas"])
    text = json.dumps(first)
    assert TOKEN not in text and "token=***" in text
    last = {r["run_dir"]: int(r["lines"][-1].split()[1]) for r in first["replicas"]}
    time.sleep(1.5)
    later = service_logs(stack, "?cursor=" + urllib.parse.quote(json.dumps(first["cursors"])))
    for r in later["replicas"]:
        ticks = [int(line.split()[1]) for line in r["lines"]]
        assert ticks and ticks[0] == last[r["run_dir"]] + 1, (r, last)  # only what came after, nothing twice

    env = cli_env(stack)
    out = subprocess.run([FLEXORCH, "logs", "--service", "ui-web", "--replica", "1", "--tail", "4"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("[replica 1 ") and "tick" in line for line in lines), out.stdout
    assert TOKEN not in out.stdout
    missing = subprocess.run([FLEXORCH, "logs", "--service", "nope"], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert missing.returncode != 0 and "no service 'nope'" in missing.stderr + missing.stdout
