"""Several Airflow machines on one box, the deployment production runs (TESTBED.md, "Several
machines"): CeleryExecutor with a Redis broker; machine ``a`` runs the api-server, scheduler,
dag-processor and a triggerer, :meth:`Machines.add_worker` and :meth:`Machines.add_triggerer`
put a Celery worker or a second triggerer on machines of their own.

A machine is a UTS namespace (its own hostname, ``machine-<x>``, which Airflow records as the
task's hostname), its own folder (AIRFLOW_HOME, HOME, dags and specs folders copied there as
git-sync would, flexorch's state and run folders) and a mount namespace in which every other
machine's folder is an empty tmpfs, so an absolute path cannot make a file look shared. What the
machines do share is what a real deployment shares: the metadata database (PostgreSQL, which is
also flexorch's store through the connection ``flexorch_store``), the broker, and the networks of
the ssh fleet and the Slurm cluster."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from flexorch_provider.dag_factory.folder import CACHE_DIR_ENV, SPECS_DIR_ENV
from flexorch_provider.dev.stack import COMPONENTS
from tests.e2e.stack import AirflowStack, free_port

STORE_CONN = "flexorch_store"
QUEUE = "default"  # [operators] default_queue: every task goes there; workers are routed by consuming it
# sh -c script, args: hostname, folders to hide..., --, command...: user values stay arguments
ENTER = (
    'h=$1; shift; while [ "$1" != "--" ]; do '
    'mount -t tmpfs -o size=1m,mode=0755 flexorch-elsewhere "$1" || exit 1; shift; done; '
    'shift; hostname "$h" || exit 1; exec "$@"'
)


class Redis:
    """A private redis-server (Debian's package) on a free loopback port, nothing saved to disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
                "--appendonly", "no", "--logfile", str(self.folder / "redis.log")]  # fmt: skip
        self.proc = subprocess.Popen(argv, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"redis-server did not start on port {self.port} (see {self.folder / 'redis.log'})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Machines(AirflowStack):
    """The stack of machine ``a`` plus workers and triggerers on machines ``b``, ``c``, ...

    :param base: one folder per machine is made in it (``machine-<x>``).
    :param source: the ``dags`` and ``specs`` folders every machine gets a copy of at start.
    """

    def __init__(self, base: Path, source: Path, extra_env: dict[str, str], machines: str = "abcd") -> None:
        self.base = base
        self.source = source
        self.names = list(machines)
        self.redis = Redis(base / "redis")
        self.machine_of = dict.fromkeys(COMPONENTS, "a")
        self.workers: list[str] = []
        super().__init__(self.folder("a"), self.folder("a") / "dags", {**extra_env, **self.own_env("a")},
                         all_admins=False)  # fmt: skip
        if self.db.server is None:
            raise RuntimeError(f"several machines need the stack's PostgreSQL: {self.db.describe()}")
        sock = str(self.db.server.socket_dir)
        if any(sock.startswith(str(self.folder(m))) for m in self.names):
            raise RuntimeError(f"the database socket {sock} is inside a machine's folder: the others cannot reach it")
        self.env.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
            # db+postgresql+psycopg2: a plain postgresql:// URL means psycopg 3 to SQLAlchemy 2.1 (TESTBED.md)
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow@/airflow?host={sock}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "FLEXORCH_STORE_CONN": STORE_CONN,
            f"AIRFLOW_CONN_{STORE_CONN.upper()}": json.dumps(
                {"conn_type": "postgres", "host": sock, "login": "airflow", "schema": "airflow"}
            ),
        })  # fmt: skip

    # --- machines ------------------------------------------------------------------------------
    def folder(self, machine: str) -> Path:
        return self.base / f"machine-{machine}"

    def own_env(self, machine: str) -> dict[str, str]:
        """What differs per machine: its own homes and folders."""
        f = self.folder(machine)
        return {"AIRFLOW_HOME": str(f), "AIRFLOW__CORE__DAGS_FOLDER": str(f / "dags"), "HOME": str(f / "home"),
                SPECS_DIR_ENV: str(f / "specs"), CACHE_DIR_ENV: str(f / "cache"),
                "FLEXORCH_STATE_DIR": str(f / "state"), "FLEXORCH_RUN_DIR": str(f / "runs")}  # fmt: skip

    def argv(self, name: str, command: list[str]) -> list[str]:
        machine = self.machine_of[name]
        hidden = [str(self.folder(m)) for m in self.names if m != machine]
        return ["unshare", "--uts", "--mount", "--fork", "--", "sh", "-c", ENTER, "sh", f"machine-{machine}",
                *hidden, "--", self.airflow, *command]  # fmt: skip

    def start(self, timeout: float = 120) -> None:
        for m in self.names:
            f = self.folder(m)
            (f / "home").mkdir(parents=True, exist_ok=True)
            for part in ("dags", "specs"):  # what git-sync would bring to each machine
                shutil.copytree(self.source / part, f / part, dirs_exist_ok=True)
        self.redis.start()
        super().start(timeout)

    def add_worker(self, machine: str) -> None:
        name = f"worker-{machine}"
        self.machine_of[name] = machine
        self.workers.append(machine)
        port = str(free_port())  # every worker serves its logs; the machines share one network here
        self.add(name, "celery", "worker", "-H", f"celery@machine-{machine}", "-q", QUEUE,
                 env={**self.own_env(machine), "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": port})  # fmt: skip

    def add_triggerer(self, machine: str) -> None:
        name = f"triggerer-{machine}"
        self.machine_of[name] = machine
        self.add(name, "triggerer",
                 env={**self.own_env(machine), "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())})  # fmt: skip

    def stop(self, grace: float = 20) -> None:
        try:
            super().stop(grace)
        finally:
            self.redis.stop()

    # --- routing: Celery's own consumer control ---------------------------------------------------
    def _control(self) -> Any:
        from celery import Celery

        return Celery("flexorch-test", broker=self.redis.url)

    def wait_workers(self, timeout: float = 120) -> None:
        app = self._control()
        try:
            want = {f"celery@machine-{m}" for m in self.workers}

            def answering() -> bool:
                replies = app.control.ping(timeout=2) or []
                return want <= {name for reply in replies for name in reply}

            self.wait_for(answering, timeout, f"workers {sorted(want)}", interval=1)
        finally:
            app.close()

    def route(self, machine: str) -> None:
        """From now on only the worker of ``machine`` takes tasks."""
        app = self._control()
        try:
            for m in self.workers:
                proc = self.procs.get(f"worker-{m}")
                if m != machine and proc is not None and proc.poll() is None:
                    app.control.cancel_consumer(QUEUE, destination=[f"celery@machine-{m}"], reply=True, timeout=5)
            replies = app.control.add_consumer(QUEUE, destination=[f"celery@machine-{machine}"], reply=True, timeout=5)
            assert replies, f"the worker of machine-{machine} did not answer"
        finally:
            app.close()

    # --- what a machine's disk holds (the test sees every disk) -------------------------------------
    def disk_log(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        try_number: int = 1,
        *machines: str,
        files: str = "*",
        map_index: int = -1,
    ) -> str:
        """The lines that machines wrote for one try of a task (its worker's log and any triggerer's
        trigger logs, ``attempt=N.log<files>``), each machine's files in turn."""
        lines = []
        for m in machines or self.names:
            folder = self.folder(m) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
            if map_index >= 0:
                folder = folder / f"map_index={map_index}"
            for path in sorted(folder.glob(f"attempt={try_number}.log{files}")):
                for raw in path.read_text(errors="replace").splitlines():
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        lines.append(raw)
                        continue
                    if not isinstance(record, dict):
                        lines.append(raw)
                        continue
                    lines.append(str(record.get("event", raw)))
                    for error in record.get("error_detail") or []:  # an exception: its type and message
                        lines.append(f"{error.get('exc_type')}: {error.get('exc_value')}")
        return "\n".join(lines)

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg2

        assert self.db.server is not None
        with psycopg2.connect(host=str(self.db.server.socket_dir), user="airflow", dbname="airflow") as conn:
            with conn.cursor() as cur:
                cur.execute(query, args)
                rows = cur.fetchall()
        conn.close()
        return [tuple(r) for r in rows]
