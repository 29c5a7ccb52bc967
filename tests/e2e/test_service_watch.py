"""Services that heal and scale on their own, on the real ssh fleet through a real Airflow stack: the
``<name>-watch`` DAG follows the replicas from the triggerer and converges only when something
changed. The service is a real HTTP server exposing an in-flight-requests gauge; the load is a
fixed number of slow requests from the test to the hosts' namespace addresses."""

from __future__ import annotations

import itertools
import json
import os
import signal
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flexorch_provider.backends.services.state import service_slug
from flexorch_provider.dag_factory.folder import CACHE_DIR_ENV, SPECS_DIR_ENV
from flexorch_provider.dev.stack import LOADER_FILE, loader_source
from tests.conftest import FLEET_CONN
from tests.e2e.stack import AirflowStack

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "e2e-service-watch"
PORT = 8100
SERVER = r"""
import http.server, os, threading, time
inflight = [0]
lock = threading.Lock()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/inflight":
            if os.path.exists(os.environ["BROKEN"]):
                self.send_response(500); self.end_headers(); return
            body = str(inflight[0]).encode()
        else:
            with lock:
                inflight[0] += 1
            try:
                time.sleep(float(self.path.split("=")[-1]) if "slow" in self.path else 0)
            finally:
                with lock:
                    inflight[0] -= 1
            body = b"ok"
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass
print("serving", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ssh_fleet):
    base = tmp_path_factory.mktemp("watch-stack")
    dags, specs = base / "dags", base / "specs"
    dags.mkdir()
    specs.mkdir()
    (dags / LOADER_FILE).write_text(loader_source())
    hosts = [h.entry for h in ssh_fleet.hosts[:3]]
    shared = Path(tempfile.mkdtemp(prefix="flexorch-watch-"))  # the fleet's accounts must see it
    shared.chmod(0o755)
    broken = shared / "metric-broken"
    web = {"name": "watched", "kind": "service", "target": "ssh", "replicas": 1, "port": PORT,
           "run": ["python3", "-c", SERVER], "env": {"BROKEN": str(broken)},
           "health": {"http": "/", "interval": "1s", "grace": "5s", "timeout": "2s"},
           "autoscale": {"min": 1, "max": 3, "target": 2, "up_delay": "2s", "down_delay": "8s", "interval": "1s",
                         "metric": {"source": "http", "path": "/inflight"}},
           "ssh": {"connection": FLEET_CONN, "hosts": hosts}, "reconcile": None}  # fmt: skip
    crashy = {"name": "crashy", "kind": "service", "target": "ssh", "replicas": 1, "reconcile": None,
              "run": "echo starting; sleep 1; exit 3", "ssh": {"connection": FLEET_CONN, "hosts": hosts[2:]}}  # fmt: skip
    (specs / "watched.yaml").write_text(json.dumps(web))
    (specs / "crashy.yaml").write_text(json.dumps(crashy))
    state = base / "state"
    s = AirflowStack(base / "home", dags, {
        SPECS_DIR_ENV: str(specs), CACHE_DIR_ENV: str(base / "cache"), "FLEXORCH_STATE_DIR": str(state),
        "FLEXORCH_SUBMIT_DAG": "0", "FLEXORCH_UI_TTL": "0.5",
        f"AIRFLOW_CONN_{FLEET_CONN.upper()}": ssh_fleet.connection_json(),
    })  # fmt: skip
    s.start()
    try:
        for dag_id in ("watched", "watched-watch", "crashy", "crashy-watch"):
            s.wait_dag(dag_id, timeout=120)
        s.broken = broken  # type: ignore[attr-defined]
        s.state = state  # type: ignore[attr-defined]
        yield s
    finally:
        for name in ("watched", "crashy"):
            try:
                run_id = s.trigger(name, conf={"action": "undeploy"})
                s.wait_for(lambda n=name, r=run_id: s.dag_run(n, r)["state"] in ("success", "failed"), 120, "undeploy")
            except Exception:
                pass
        s.stop()
        s.save_logs(ARTIFACTS)


def status(stack: AirflowStack, name: str = "watched") -> dict[str, Any]:
    return dict(stack.api("GET", f"/flexorch/api/services/{name}"))


def deploy(stack: AirflowStack, name: str) -> None:
    run_id = stack.trigger(name)
    stack.wait_for(lambda: stack.dag_run(name, run_id)["state"] in ("success", "failed"), 180, f"deploy of {name}")
    assert stack.dag_run(name, run_id)["state"] == "success"


def host_of(fleet: Any, label: str) -> Any:
    return next(h for h in fleet.hosts if h.entry == label)


def healthy(stack: AirflowStack, n: int) -> dict[str, Any] | None:
    s = status(stack)
    return s if s["healthy"] == n and s["running"] == n else None


def watch_log(stack: AirflowStack, *words: str) -> str:
    """The watcher's task logs of its finished runs, once they hold all ``words``."""

    def logs() -> str:
        runs = stack.api("GET", "/api/v2/dags/watched-watch/dagRuns?limit=100")["dag_runs"]
        done = [r["dag_run_id"] for r in runs if r["state"] == "success"]
        return "\n".join(stack.task_log("watched-watch", run_id, "watch", 1) for run_id in done)

    def holding() -> str | None:
        text = logs()
        return text if all(w in text for w in words) else None

    try:
        return str(stack.wait_for(holding, 60, "the log"))
    except TimeoutError:
        raise AssertionError(f"{words} not all in the watcher's logs:\n{logs()}") from None


def test_a_killed_replica_is_restored_by_the_watcher(stack, ssh_fleet):
    deploy(stack, "watched")
    first = stack.wait_for(lambda: healthy(stack, 1), 60, "one healthy replica")
    host = host_of(ssh_fleet, first["replicas"][0]["host"])
    pid = int(host.processes("import http.server")[0].split()[0])
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def restored() -> bool:
        servers = [int(p.split()[0]) for h in ssh_fleet.hosts[:3] for p in h.processes("import http.server")]
        return bool(servers) and pid not in servers and healthy(stack, 1) is not None

    stack.wait_for(restored, 90, "the replica restored")
    print(f"killed replica healthy again after {time.monotonic() - killed:.1f}s")
    watch_log(stack, "restore: replica 0 not running")


def load(addresses: list[str], requests: int, seconds: float) -> list[threading.Thread]:
    """A fixed number of slow requests, spread over the addresses (the hosts' own, on the test bridge)."""

    def one(address: str) -> None:
        try:
            urllib.request.urlopen(f"http://{address}:{PORT}/slow={seconds}", timeout=seconds + 30).read()
        except OSError:
            pass

    threads = [
        threading.Thread(target=one, args=(addresses[i % len(addresses)],), daemon=True) for i in range(requests)
    ]
    for t in threads:
        t.start()
    return threads


def test_load_scales_up_to_max_and_back_down_after_the_delay(stack, ssh_fleet):
    stack.wait_for(lambda: healthy(stack, 1), 60, "one healthy replica")
    one = host_of(ssh_fleet, status(stack)["replicas"][0]["host"])
    threads = load([one.address], 8, 25)  # 8 in flight on one replica, target 2 per replica → max 3
    up = stack.wait_for(lambda: healthy(stack, 3), 90, "three healthy replicas")
    assert {r["host"] for r in up["replicas"]} == {h.entry for h in ssh_fleet.hosts[:3]}
    for t in threads:
        t.join(60)
    stack.wait_for(lambda: healthy(stack, 1), 120, "back to one replica once the load stopped")
    watch_log(stack, "replicas 1 → 3", "scaling up", "scaling down", "draining (health unready) before it stops")


def test_an_unreadable_metric_never_scales_down(stack):
    stack.wait_for(lambda: healthy(stack, 1), 60, "one healthy replica")
    # scale up first, then break the metric: it must stay up
    host = status(stack)["replicas"][0]["host"]
    address = host.split("@")[1]
    threads = load([address], 6, 15)
    stack.wait_for(lambda: healthy(stack, 3), 90, "three healthy replicas")
    stack.broken.write_text("broken")  # type: ignore[attr-defined]
    try:
        for t in threads:
            t.join(60)
        time.sleep(20)  # well past down_delay (8 s)
        assert status(stack)["running"] == 3
    finally:
        stack.broken.unlink()  # type: ignore[attr-defined]
    stack.wait_for(lambda: healthy(stack, 1), 120, "back to one replica once the metric reads again")


def test_a_lost_host_moves_its_replica(stack, ssh_fleet, restart_host):
    stack.wait_for(lambda: healthy(stack, 1), 60, "one healthy replica")
    before = status(stack)["replicas"][0]["host"]
    host = host_of(ssh_fleet, before)
    lost = time.monotonic()
    host.kill()
    restart_host(host)
    moved = stack.wait_for(lambda: (s := healthy(stack, 1)) and s["replicas"][0]["host"] != before and s, 120,
                           "the replica on another host")  # fmt: skip
    print(f"lost host's replica healthy on {moved['replicas'][0]['host']} after {time.monotonic() - lost:.1f}s")
    host.start()


def test_a_crash_looping_replica_backs_off(stack):
    deploy_run = stack.trigger("crashy")
    stack.wait_for(lambda: stack.dag_run("crashy", deploy_run)["state"] in ("success", "failed"), 180, "deploy")
    path = Path(stack.state) / "services" / f"{service_slug('crashy')}.json"  # type: ignore[attr-defined]

    def restarts() -> list[float]:
        try:
            return list(json.loads(path.read_text())["restarts"].get("0", []))
        except (OSError, ValueError):
            return []

    times = stack.wait_for(lambda: restarts() if len(restarts()) >= 4 else None, 150, "four restarts")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[-1] > gaps[0] and gaps[-1] >= 9, gaps  # 5 s, then 10 s ... not a restart per second
    text = textwrap.shorten(json.dumps(gaps), 200)
    print(f"crash loop restart gaps: {text}")
