"""`flexorch up --demo-targets` (what scripts/demo.sh runs): start, run the local, ssh and Slurm
examples, log in, Ctrl-C.

The demo must leave nothing behind: after SIGINT every process that carries its
AIRFLOW_HOME is gone.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from flexorch_provider.dev.stack import free_port
from flexorch_provider.dev.testbed.slurm import start_cluster
from tests.conftest import SESSION_SLURM

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]


def processes_with_home(home: Path) -> list[int]:
    found = []
    needle = f"AIRFLOW_HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _env_file(path: Path) -> dict[str, str]:
    """``export K='v'`` lines of the stack's airflow.env, as a shell would read them."""
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture
def machine_slurm():
    """The demo starts this machine's one Slurm of ours: the test session's cluster, if it was
    started, comes back afterwards."""
    yield
    if SESSION_SLURM:
        start_cluster(**SESSION_SLURM)  # type: ignore[arg-type]


def test_the_demo_runs_local_ssh_and_slurm_pauses_what_it_cannot_run_and_stops_on_ctrl_c(tmp_path, machine_slurm):
    home = tmp_path / "demo"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["FLEXORCH_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "flexorch"), "up", "--specs", str(ROOT / "spec_examples"),
         "--home", str(home), "--port", str(port), "--demo-targets",
         "--run", "hello-local", "--run", "hello-ssh", "--run", "hello-slurm"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(420), "".join(lines)[-4000:]
        out = "".join(lines)
        for dag_id in ("hello-local", "hello-ssh", "hello-slurm"):
            assert f"==> {dag_id}: success" in out, out[-4000:]
        assert "[batch] step 5" in out  # the jobs' own logs streamed to the terminal
        assert "[gpu-box-1] hello from flexorch-demo1" in out and "[gpu-box-2] hello from flexorch-demo2" in out
        assert re.search(r"job \d+ on \S+ for \d{4}-\d\d-\d\d: CUDA_VISIBLE_DEVICES=\d", out), out[-3000:]
        # what this machine cannot run is paused, saying what it needs
        assert "paused eval-kubernetes: needs connection kubernetes_default (kubernetes target)" in out
        assert "paused embeddings-ssh-reconcile: needs connection lab_gpu (ssh target)" in out
        assert "kubernetes: not started: no Kubernetes API server" in out
        assert f"Airflow UI:  http://127.0.0.1:{port}" in out
        password = re.search(r"log in as:\s+admin / (\S+)", out).group(1)  # type: ignore[union-attr]
        # the printed credentials work
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/auth/token",
            data=json.dumps({"username": "admin", "password": password}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            token = json.loads(resp.read())["access_token"]

        def get(path: str):
            r = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(r, timeout=30) as resp:
                return json.loads(resp.read())

        dags = {d["dag_id"]: d for d in get("/api/v2/dags?limit=100")["dags"]}
        assert dags["eval-kubernetes"]["is_paused"] and dags["embeddings-ssh-reconcile"]["is_paused"]
        assert not dags["hello-slurm"]["is_paused"] and not dags["hello-ssh"]["is_paused"]
        runs = get("/api/v2/dags/~/dagRuns?limit=200")["dag_runs"]
        assert [r for r in runs if r["state"] == "failed"] == [], "no example DAG fails in the demo"
        # flexorch gpus, with the stack's settings as the README says (. .demo/airflow.env)
        stack_env = {**env, **_env_file(home / "airflow.env")}
        gpus = subprocess.run([str(Path(sys.executable).parent / "flexorch"), "gpus"], env=stack_env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert gpus.returncode == 0, gpus.stdout + gpus.stderr
        assert "demo-fleet" in gpus.stdout and "L4" in gpus.stdout, gpus.stdout
        assert "demo-slurm" in gpus.stdout and "a100" in gpus.stdout.lower(), gpus.stdout
        assert processes_with_home(home), "the stack should be running"
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(90)
    out = "".join(lines)
    assert rc == 0, out[-3000:]
    assert "==> stopped" in out
    deadline = time.time() + 10
    while processes_with_home(home) and time.time() < deadline:
        time.sleep(0.5)
    assert processes_with_home(home) == []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"fx{proc.pid % 100000}h" not in namespaces, namespaces  # the demo fleet's hosts are gone
    deadline = time.time() + 10  # killed at stop; a process can take a moment to be reaped
    while subprocess.run(["pgrep", "-u", "flexorch-demo1"], capture_output=True).returncode == 0:
        assert time.time() < deadline, "the demo fleet's first host still runs processes"
        time.sleep(0.5)
