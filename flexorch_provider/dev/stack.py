"""The embedded Airflow stack: api-server, scheduler, dag-processor and triggerer on a private
PostgreSQL (SQLite where none is installed; see :mod:`flexorch_provider.dev.stack_db`).

Used by ``flexorch up`` (the demo) and by the end-to-end tests. Every component runs in
its own session (``setsid``) so that stopping it — SIGTERM to its process group, SIGKILL
after a grace period — also stops the task processes it started. Output goes to
``<home>/<component>.log``.

This is a development stack (LocalExecutor, one machine). For production run Airflow as
usual and install flexorch-provider into it.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexorch_provider.dev.stack_db import Database, choose

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
LOADER_FILE = "flexorch_dags.py"
REQUEST_TIMEOUT_S = 60  # longer than SQLite's lock wait (stack_db): a busy server answers late, not never


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens there, else any free port on loopback."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1")


def loader_source() -> str:
    """The drop-in loader file users copy into their dags folder (``dags/flexorch_dags.py``)."""
    from importlib.resources import files

    return files("flexorch_provider.dag_factory").joinpath("loader_template.py").read_text(encoding="utf-8")


class AirflowStack:
    """Start, talk to (REST) and stop a local Airflow.

    :param home: AIRFLOW_HOME (created); the database and component logs live here.
    :param dags: the dags folder.
    :param all_admins: skip login (tests); otherwise the simple auth manager's ``admin``
        user is used and its generated password read from ``home``.
    :param db: ``auto`` (default; also $FLEXORCH_STACK_DB), ``postgres`` or ``sqlite``.
    :param scratch: the database goes with the stack: :meth:`stop` deletes it (tests, benches).
    """

    def __init__(
        self,
        home: Path,
        dags: Path,
        extra_env: dict[str, str] | None = None,
        *,
        port: int | None = None,
        all_admins: bool = True,
        db: str | None = None,
        scratch: bool = False,
    ) -> None:
        self.home = home
        self.db: Database = choose(home, db)
        self.scratch = scratch
        self.dags = dags
        self.port = free_port(port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.all_admins = all_admins
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}  # name → (airflow args, env)
        self._token: str | None = None
        self.passwords: dict[str, str] = {}  # users made outside the simple auth manager (FAB's `airflow users`)
        airflow_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        self.env = {
            **airflow_env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            **self.db.env,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": str(all_admins),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
            # an edited spec's DAG is stored again no sooner than this (default 30 s: edits looked stuck)
            "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "2",
            # a task whose worker died is noticed and retried after this (default 300 s)
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "15",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            # a triggerer that died hands its triggers to a live one after this long
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
            **(extra_env or {}),
        }
        self.airflow = str(Path(sys.executable).parent / "airflow")

    # --- lifecycle ---------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` against this stack's home and database."""
        return subprocess.run(
            [self.airflow, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, timeout: float = 120) -> None:
        """Start the database and the components; if any of it fails, what did start is stopped
        (:meth:`stop`) before the error is raised: a failed start leaves no server behind."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags.mkdir(parents=True, exist_ok=True)
        try:
            self.db.start()
            self._write_env_file()
            migrated = self.cli("db", "migrate")
            if migrated.returncode != 0:
                raise RuntimeError(f"airflow db migrate failed:\n{migrated.stdout[-2000:]}{migrated.stderr[-2000:]}")
            for name in COMPONENTS:
                self._launch(name)
            self.wait_for(lambda: self._get("/api/v2/monitor/health") is not None, timeout, "api-server health")
        except BaseException:
            self.stop(grace=5)
            raise

    def _write_env_file(self) -> None:
        """``<home>/airflow.env``: the settings this stack runs with, for the ``airflow`` CLI in a
        shell (``. <home>/airflow.env && airflow backfill create ...``)."""
        import shlex

        lines = [
            f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items()) if k.startswith(("AIRFLOW", "FLEXORCH"))
        ]
        lines.append(f"export FLEXORCH_API_URL={shlex.quote(self.url)}  # for flexorch login/status/submit")
        path = self.home / "airflow.env"
        path.write_text(
            "# written by flexorch's embedded stack; source it to use the airflow CLI on it\n" + "\n".join(lines) + "\n"
        )
        path.chmod(0o600)

    def argv(self, name: str, command: list[str]) -> list[str]:
        """How component ``name`` is started: ``airflow <command>`` (a test bed that gives each
        component a machine of its own wraps it)."""
        return [self.airflow, *command]

    def _launch(self, name: str, *command: str, env: dict[str, str] | None = None) -> None:
        self.commands[name] = (list(command or (name,)), dict(env or {}))
        argv, extra = self.commands[name]
        with open(self.home / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                self.argv(name, argv),
                env={**self.env, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def add(self, name: str, *command: str, env: dict[str, str] | None = None) -> None:
        """Start one more component, ``airflow <command>``, known as ``name`` (e.g. a second
        triggerer: ``add("triggerer-2", "triggerer")``), with ``env`` on top of the stack's;
        :meth:`kill` and :meth:`stop` reach it."""
        self._launch(name, *command, env=env)

    def kill(self, name: str) -> None:
        """SIGKILL one component and all its processes, as when its machine dies."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def remove(self, name: str) -> None:
        """SIGKILL a component and stop counting it (waits no longer fail because it is gone); :meth:`restart` brings it back."""
        self.kill(name)
        del self.procs[name]

    def restart(self, name: str) -> None:
        """Start a killed component again, as it was started."""
        argv, env = self.commands[name]
        self._launch(name, *argv, env=env)

    def stop(self, grace: float = 20) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.db.stop(remove=self.scratch)

    def save_logs(self, dest: Path) -> None:
        """Copy every component's log to ``dest`` (kept as test artifacts)."""
        import shutil

        dest.mkdir(parents=True, exist_ok=True)
        for log in self.home.glob("*.log"):
            shutil.copy(log, dest / log.name)
        server = self.db.server
        if server is not None and (server.data / "server.log").exists():
            shutil.copy(server.data / "server.log", dest / "postgres.log")

    def password(self, user: str = "admin") -> str | None:
        """The password the api-server generated for ``user`` (None with all_admins or before start)."""
        if user in self.passwords:
            return self.passwords[user]
        path = self.home / "simple_auth_manager_passwords.json.generated"
        try:
            return str(json.loads(path.read_text())[user])
        except (OSError, ValueError, KeyError):
            return None

    # --- REST ----------------------------------------------------------------------------
    def _auth_header(self) -> str | None:
        if self.all_admins:
            return None
        if self._token is None:
            body = json.dumps({"username": "admin", "password": self.password()}).encode()
            req = urllib.request.Request(self.url + "/auth/token", data=body, method="POST")
            req.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
                self._token = json.loads(resp.read())["access_token"]
        return f"Bearer {self._token}"

    def _request(self, method: str, path: str, body: Any = None, accept: str = "application/json") -> Any:
        try:
            return self._request_once(method, path, body, accept)
        except urllib.error.HTTPError as e:
            if e.code != 401 or self._token is None:
                raise
            self._token = None  # expired ([api_auth] jwt_expiration_time): log in again, once
            return self._request_once(method, path, body, accept)

    def _request_once(self, method: str, path: str, body: Any, accept: str) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", accept)
        auth = self._auth_header() if not path.startswith("/api/v2/monitor") else None
        if auth:
            req.add_header("Authorization", auth)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            raw = resp.read()
        return json.loads(raw) if accept == "application/json" and raw else raw.decode()

    def _get(self, path: str) -> Any:
        try:
            return self._request("GET", path)
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self._request(method, path, body)

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = check()
            if value:
                return value
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.home / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited while waiting for {what}:\n{tail}")
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")

    def dag(self, dag_id: str) -> Any:
        return self._get(f"/api/v2/dags/{dag_id}")

    def dag_ids(self) -> list[str]:
        data = self._get("/api/v2/dags?limit=1000") or {}
        return [d["dag_id"] for d in data.get("dags", [])]

    def wait_dag(self, dag_id: str, timeout: float = 60) -> Any:
        return self.wait_for(lambda: self.dag(dag_id), timeout, f"DAG {dag_id} to be parsed")

    def trigger(self, dag_id: str, logical_date: str | None = None, conf: dict[str, Any] | None = None) -> str:
        """Create a run; a transient server error or a request that timed out (a busy SQLite) is retried
        with the same run id."""
        import datetime as dt

        run_id = f"manual__{dt.datetime.now(dt.UTC).isoformat()}"
        body: dict[str, Any] = {"dag_run_id": run_id, "logical_date": logical_date}
        if conf:
            body["conf"] = conf
        for attempt in range(5):
            try:
                return str(self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"])
            except urllib.error.HTTPError as e:
                if e.code == 409 and attempt > 0:
                    return run_id  # an earlier attempt got through after all
                if e.code < 500 or attempt == 4:
                    raise
                time.sleep(1 + attempt)
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == 4:  # no answer in time (a server waiting on SQLite's lock): maybe it got through
                    raise
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def dag_run(self, dag_id: str, run_id: str) -> Any:
        return self._get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}") or {}

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        data = self._get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances") or {}
        return list(data.get("task_instances", []))

    def ti(self, dag_id: str, run_id: str, task_id: str) -> Any:
        return self._get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}") or {}

    def wait_ti_state(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 120) -> Any:
        return self.wait_for(
            lambda: (ti := self.ti(dag_id, run_id, task_id)) and ti.get("state") in states and ti,
            timeout,
            f"{task_id} to reach {states}",
        )

    def task_log_entries(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[dict[str, Any]]:
        """One try's log as Airflow's structured records (``timestamp``, ``event``, ...), [] if unreadable.

        The first records, without a timestamp, name the log's sources; how many there are changes
        with the task's state (worker or triggerer log server while it runs), so a reader that
        follows a log must key records by content, not by position."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}?full_content=true"
        try:
            data = self._request("GET", path)
        except (urllib.error.URLError, OSError):
            return []
        content = data.get("content", "") if isinstance(data, dict) else data
        if isinstance(content, list):
            return [c if isinstance(c, dict) else {"event": str(c)} for c in content]
        return [{"event": line} for line in str(content).splitlines()]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        entries = self.task_log_entries(dag_id, run_id, task_id, try_number)
        return "\n".join(str(e.get("event", e)) for e in entries)
