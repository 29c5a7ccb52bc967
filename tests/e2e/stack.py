"""A real Airflow stack for tests: api-server, scheduler, dag-processor, triggerer on SQLite.

Each component runs in its own session (setsid) and is stopped with SIGTERM to its
process group; its output goes to a file kept with the test artifacts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AirflowStack:
    def __init__(self, home: Path, dags: Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.dags = dags
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        airflow_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        self.env = {
            **airflow_env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            **(extra_env or {}),
        }
        self.airflow = str(Path(sys.executable).parent / "airflow")

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        subprocess.run([self.airflow, "db", "migrate"], env=self.env, check=True, capture_output=True, timeout=180)
        for name in COMPONENTS:
            out = open(self.home / f"{name}.log", "wb")
            self.procs[name] = subprocess.Popen(
                [self.airflow, name], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_for(lambda: self._get("/api/v2/monitor/health") is not None, 90, "api-server health")

    def stop(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    # --- REST --------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, accept: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if accept == "application/json" and raw else raw.decode()

    def _get(self, path: str) -> Any:
        try:
            return self._request("GET", path)
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self._request(method, path, body)

    def wait_for(self, check: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = check()
            if value:
                return value
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.home / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"{name} exited while waiting for {what}:\n{tail}")
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def wait_dag(self, dag_id: str, timeout: float = 60) -> Any:
        return self.wait_for(lambda: self._get(f"/api/v2/dags/{dag_id}"), timeout, f"DAG {dag_id} to be parsed")

    def trigger(self, dag_id: str, logical_date: str | None = None) -> str:
        run = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": logical_date})
        return str(run["dag_run_id"])

    def ti(self, dag_id: str, run_id: str, task_id: str) -> Any:
        return self._get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}") or {}

    def wait_ti_state(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 120) -> Any:
        return self.wait_for(
            lambda: (ti := self.ti(dag_id, run_id, task_id)) and ti.get("state") in states and ti,
            timeout,
            f"{task_id} to reach {states}",
        )

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}?full_content=true"
        try:
            data = self._request("GET", path)
        except (urllib.error.URLError, OSError):
            return ""
        content = data.get("content", "") if isinstance(data, dict) else data
        if isinstance(content, list):
            return "\n".join(str(c.get("event", c)) if isinstance(c, dict) else str(c) for c in content)
        return str(content)
