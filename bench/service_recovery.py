"""Service recovery: a killed replica, and a lost host, until the service is healthy again —
the watcher (``<name>-watch``) against the cron reconcile at its default (every 5 minutes), same run.

Real Airflow stack (the e2e tests' embedded one) and real sshd hosts in network namespaces (the
test suite's fleet; needs root and openssh-server). Two copies of one HTTP service: ``bench-watched``
(the watcher) and ``bench-cron`` (``watch: false``, the reconcile DAG at ``*/5 * * * *``), each on
its own hosts. Time is measured from the kill to the first moment the service answers its health
check with all replicas healthy (read with the backend, as the page does).

    .venv/bin/python bench/service_recovery.py [--repeat 3]

Goals (issue 18): a killed replica healthy again ≤ 30 s; a lost host's replica healthy elsewhere
≤ 60 s. The cron rows take up to 5 minutes each: the wait for the next tick is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.ssh import SshBackend
from flexorch_provider.dag_factory.folder import CACHE_DIR_ENV, SPECS_DIR_ENV
from flexorch_provider.dev.stack import LOADER_FILE, AirflowStack, loader_source
from flexorch_provider.dev.testbed.fleet import start_fleet
from flexorch_provider.resolve import load_workload

CONN = "flexorch_bench_fleet"
PORT = 8200
SERVER = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()\n"
)


def spec(name: str, hosts: list[str], watch: bool) -> dict[str, Any]:
    return {"name": name, "kind": "service", "target": "ssh", "replicas": 1, "port": PORT, "watch": watch,
            "run": ["python3", "-c", SERVER], "health": {"http": "/", "interval": "1s", "grace": "10s"},
            "ssh": {"connection": CONN, "hosts": hosts}}  # fmt: skip


def status(name: str, body: dict[str, Any]) -> dict[str, Any]:
    w = load_workload(body)
    return SshBackend().service_status(ResolvedJob.for_run(w, f"service/{name}"))


def healthy_on(name: str, body: dict[str, Any]) -> str | None:
    try:
        s = status(name, body)
    except Exception:
        return None
    return s["replicas"][0]["host"] if s["healthy"] == 1 and s["running"] == 1 else None


def wait_healthy(name: str, body: dict[str, Any], timeout: float, not_on: str | None = None) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        host = healthy_on(name, body)
        if host is not None and host != not_on:
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"{name} not healthy again after {timeout:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="flexorch-bench-recovery-"))
    base.chmod(0o755)
    fleet = start_fleet(base / "fleet", 4)
    os.environ[f"AIRFLOW_CONN_{CONN.upper()}"] = fleet.connection_json()
    watched_hosts, cron_hosts = [h.entry for h in fleet.hosts[:2]], [h.entry for h in fleet.hosts[2:]]
    specs = {
        "bench-watched": spec("bench-watched", watched_hosts, True),
        "bench-cron": spec("bench-cron", cron_hosts, False),
    }
    dags, folder = base / "dags", base / "specs"
    dags.mkdir()
    folder.mkdir()
    (dags / LOADER_FILE).write_text(loader_source())
    for name, body in specs.items():
        (folder / f"{name}.yaml").write_text(json.dumps(body))
    stack = AirflowStack(base / "home", dags, {SPECS_DIR_ENV: str(folder), CACHE_DIR_ENV: str(base / "cache"),
                         "FLEXORCH_STATE_DIR": str(base / "state"), "FLEXORCH_SUBMIT_DAG": "0",
                         f"AIRFLOW_CONN_{CONN.upper()}": fleet.connection_json()}, scratch=True)  # fmt: skip
    stack.start()
    rows: dict[str, list[float]] = {}
    try:
        for name in specs:
            stack.wait_dag(name, 120)
            run_id = stack.trigger(name)
            stack.wait_for(lambda n=name, r=run_id: stack.dag_run(n, r)["state"] == "success", 180, f"deploy {name}")
        for name, body in specs.items():
            repeat = args.repeat if name == "bench-watched" else 1
            for _ in range(repeat):
                wait_healthy(name, body, 120)
                host = next(h for h in fleet.hosts if h.entry == healthy_on(name, body))
                pid = int(host.processes("import http.server")[0].split()[0])
                os.kill(pid, signal.SIGKILL)
                time.sleep(1.5)  # the replica is seen dead by now
                rows.setdefault(f"{name}: killed replica", []).append(1.5 + wait_healthy(name, body, 420))
            wait_healthy(name, body, 120)
            lost = next(h for h in fleet.hosts if h.entry == healthy_on(name, body))
            lost.kill()
            started = time.monotonic()
            try:
                rows.setdefault(f"{name}: lost host", []).append(wait_healthy(name, body, 420, not_on=lost.entry))
            finally:
                lost.start()
            print(f"  ({name}: host lost, replica moved after {time.monotonic() - started:.1f}s)")
    finally:
        stack.stop()
        fleet.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{'recovery (kill → healthy again)':45} {'median s':>9} {'runs':>5}")
    for label, values in rows.items():
        print(f"{label:45} {statistics.median(values):9.1f} {len(values):5d}")
    for what in ("killed replica", "lost host"):
        w, c = rows.get(f"bench-watched: {what}"), rows.get(f"bench-cron: {what}")
        if w and c:
            print(f"{what}: cron reconcile / watcher = {statistics.median(c) / statistics.median(w):.1f}×")


if __name__ == "__main__":
    main()
