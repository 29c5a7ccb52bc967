"""The spec folder on a real Airflow stack: drop a spec → DAG → run; backfill; bad specs; the UI.

One stack (api-server, scheduler, dag-processor, triggerer; PostgreSQL, LocalExecutor) whose
dags folder holds only the drop-in loader file; the specs live in a folder named by
FLEXORCH_SPECS_DIR, exactly as a user would set it up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from flexorch_provider.dag_factory.build import INVALID_TAG
from flexorch_provider.dag_factory.folder import CACHE_DIR_ENV, SPECS_DIR_ENV
from flexorch_provider.dev.stack import LOADER_FILE, loader_source
from tests.conftest import FLEET_CONN
from tests.e2e.stack import AirflowStack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e-specs-folder"

DAILY = """\
name: daily-report
kind: batch
description: Writes one report per day.
owner: analytics
tags: [reports]
schedule: "@daily"
start_date: 2025-01-01
target: local
run: echo "report for {{ ds }}"
"""

DROPPED = """\
name: dropped-job
kind: batch
target: local
env: {WHO: dropped}
run: echo "hello from the $WHO spec"
"""

BAD = """\
name: bad-report
kind: batch
target: local
run: echo never
timeout: 2 fortnights
"""


TRAINER = """\
name: trainer
kind: pipeline
code: .
steps:
  - name: on-ssh
    target: ssh
    ssh: {{connection: {conn}, hosts: [{host}]}}
    run: python3 train.py
  - name: on-slurm
    target: slurm
    after: [on-ssh]
    run: python3 train.py
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ssh_fleet, slurm_cluster):
    base = tmp_path_factory.mktemp("specs-stack")
    dags, specs = base / "dags", base / "specs"
    dags.mkdir()
    specs.mkdir()
    (dags / LOADER_FILE).write_text(loader_source())
    shutil.copy(ROOT / "spec_examples" / "hello-local.yaml", specs / "hello-local.yaml")
    (specs / "daily-report.yaml").write_text(DAILY)
    s = AirflowStack(
        base / "home",
        dags,
        {SPECS_DIR_ENV: str(specs), "FLEXORCH_RUN_DIR": str(base / "runs"), CACHE_DIR_ENV: str(base / "cache"),
         f"AIRFLOW_CONN_{FLEET_CONN.upper()}": os.environ[f"AIRFLOW_CONN_{FLEET_CONN.upper()}"]},
    )  # fmt: skip
    s.fleet = ssh_fleet  # type: ignore[attr-defined]
    s.specs = specs  # type: ignore[attr-defined]
    s.start()
    try:
        s.wait_dag("hello-local", timeout=90)
        yield s
    finally:
        s.stop()
        s.save_logs(ARTIFACTS)


def _run_log(stack: AirflowStack, dag_id: str, run_id: str, task_id: str) -> str:
    return stack.task_log(dag_id, run_id, task_id, 1)


def test_dropped_spec_appears_and_runs(stack):
    started = time.monotonic()
    (stack.specs / "dropped-job.yaml").write_text(DROPPED)
    stack.wait_dag("dropped-job", timeout=60)
    seconds = time.monotonic() - started
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "pickup.json").write_text(json.dumps({"spec_to_rest_api_seconds": round(seconds, 2)}))

    dag = stack.dag("dropped-job")
    assert {t["name"] for t in dag["tags"]} >= {"flexorch", "kind:batch", "target:local", "team:airflow"}
    run_id = stack.trigger("dropped-job", logical_date=None)
    ti = stack.wait_ti_state("dropped-job", run_id, "batch", {"success", "failed"}, timeout=120)
    log = _run_log(stack, "dropped-job", run_id, "batch")
    assert ti["state"] == "success", log
    assert "hello from the dropped spec" in log


def test_manual_run_without_logical_date_uses_the_run_date_for_ds(stack):
    run_id = stack.trigger("daily-report", logical_date=None)
    ti = stack.wait_ti_state("daily-report", run_id, "batch", {"success", "failed"}, timeout=120)
    log = _run_log(stack, "daily-report", run_id, "batch")
    assert ti["state"] == "success", log
    run_after = stack.dag_run("daily-report", run_id)["run_after"][:10]
    assert f"report for {run_after}" in log
    assert "no logical date" in log


def test_backfill_three_days_each_sees_its_own_ds(stack):
    args = ("backfill", "create", "--dag-id", "daily-report", "--from-date", "2025-03-01", "--to-date", "2025-03-03")
    out = stack.cli(*args)  # first time: the stack's PostgreSQL has no "database is locked"
    assert out.returncode == 0, out.stdout + out.stderr

    def backfill_runs():
        data = stack._get("/api/v2/dags/daily-report/dagRuns?run_type=backfill&limit=50") or {}
        runs = data.get("dag_runs", [])
        return runs if len(runs) == 3 and all(r["state"] in ("success", "failed") for r in runs) else None

    runs = stack.wait_for(backfill_runs, 240, "3 backfill runs to finish", interval=2)
    days = sorted(r["logical_date"][:10] for r in runs)
    assert days == ["2025-03-01", "2025-03-02", "2025-03-03"]
    for run in runs:
        log = _run_log(stack, "daily-report", run["dag_run_id"], "batch")
        assert run["state"] == "success", log
        assert f"report for {run['logical_date'][:10]}" in log
        others = set(days) - {run["logical_date"][:10]}
        assert not any(f"report for {d}" in log for d in others)


def test_bad_spec_hides_no_other_dag_and_shows_its_error(stack):
    (stack.specs / "bad-report.yaml").write_text(BAD)
    dag = stack.wait_dag("bad-report", timeout=60)
    assert INVALID_TAG in {t["name"] for t in dag["tags"]}
    assert dag["dag_display_name"] == "invalid spec: specs/bad-report.yaml"
    details = stack.api("GET", "/api/v2/dags/bad-report/details")
    assert "specs/bad-report.yaml:5: timeout:" in details["doc_md"]
    listed = set(stack.dag_ids())
    assert {"hello-local", "daily-report", "bad-report"} <= listed
    errors = stack.api("GET", "/api/v2/importErrors")
    assert errors["total_entries"] == 0, errors  # nothing else was hidden behind an import error
    # running it fails with the same message
    run_id = stack.trigger("bad-report")
    stack.wait_ti_state("bad-report", run_id, "spec_error", {"failed"}, timeout=120)
    assert "timeout" in _run_log(stack, "bad-report", run_id, "spec_error")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("chromium is not installed; scripts/system-deps.sh installs it (apt-get install chromium)")


def test_dag_list_in_a_real_browser(stack):
    (stack.specs / "bad-report.yaml").write_text(BAD)  # the same file the test above drops
    stack.wait_dag("bad-report", timeout=60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dag-list.png"
    base = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--virtual-time-budget=15000", "--window-size=1400,900",
    ]  # fmt: skip
    url = f"{stack.url}/dags"
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [*base, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True, text=True, timeout=120
        ).stdout
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([*base, f"--user-data-dir={profile}", f"--screenshot={shot}", url], capture_output=True,
                       timeout=120)  # fmt: skip
    (ARTIFACTS / "dag-list.html").write_text(dom)
    assert "hello-local" in dom and "daily-report" in dom, dom[-2000:]
    assert "invalid spec: specs/bad-report.yaml" in dom
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_spec_with_code_beside_it_runs_that_code_on_ssh_and_slurm(stack):
    """Code in the specs folder (as git-sync would bring it) reaches the targets: nothing was copied there."""
    folder = stack.specs / "trainer"
    (folder / "lib").mkdir(parents=True)
    (folder / "train.py").write_text('import os\nprint("training with", open("lib/lr.txt").read().strip(), "from", '
                                     'os.environ["FLEXORCH_CODE_DIGEST"][:12])\n')  # fmt: skip
    (folder / "lib" / "lr.txt").write_text("lr=0.003\n")
    host = stack.fleet.hosts[1]
    (folder / "spec.yaml").write_text(TRAINER.format(conn=FLEET_CONN, host=host.entry))
    stack.wait_dag("trainer", timeout=60)
    run_id = stack.trigger("trainer", logical_date=None)
    for task in ("on-ssh", "on-slurm"):
        ti = stack.wait_ti_state("trainer", run_id, task, {"success", "failed", "upstream_failed"}, timeout=180)
        log = _run_log(stack, "trainer", run_id, task)
        assert ti["state"] == "success", log
        [digest] = {line.split("from ")[-1] for line in log.splitlines() if "training with lr=0.003 from " in line}
        assert f"code {digest}: 3 files" in log, log  # spec.yaml, train.py, lib/lr.txt
    assert (host.home / ".flexorch" / "code").is_dir()
