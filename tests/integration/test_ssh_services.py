"""Services on the ssh target against real sshd hosts, each in its own network namespace.

Every replica listens on the same port on its own host (as on real machines) and answers
HTTP with its version, slot and account; the tests read those answers from outside the
hosts, across the bridge, like a load balancer would. Covered: deploy spreads replicas one
per host; a reconcile with nothing to do changes nothing; a killed replica and a killed
host are restored by reconcile; a rolling update replaces one replica at a time, the new
one healthy before the old one stops; a broken revision stops the rollout with its log
tail while the old replicas keep serving; scale down; undeploy leaves no process; a fleet
too small for the replicas is refused with what to do.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.ssh import SshBackend
from flexorch_provider.exceptions import ServiceError
from flexorch_provider.resolve import load_workload
from tests.integration.conftest import FLEET_CONN

BACKEND = SshBackend()
DATA = Path(__file__).parents[1] / "data"
PORT = 8000
SERVER = r"""
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "%s %s %s" % (os.environ["VERSION"], os.environ["FLEXORCH_REPLICA"], os.environ["USER"])
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())
    def log_message(self, *args):
        pass
print("serving", os.environ["VERSION"], flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


def service(action, hosts, *, version="v1", replicas=3, run=None, name="web", **extra):
    spec = {"name": name, "kind": "service", "target": "ssh", "run": run or ["python3", "-c", SERVER],
            "env": {"VERSION": version}, "replicas": replicas, "port": PORT,
            "health": {"http": "/", "interval": "1s", "grace": "10s"},
            "ssh": {"connection": FLEET_CONN, "hosts": hosts}, **extra}  # fmt: skip
    w = load_workload(spec)
    job = ResolvedJob(run_key=f"{name}/deploy/manual/-1", name=name, kind="service", workload=w, run=w.run,
                      env=dict(w.env), action=action)  # fmt: skip
    lines: list[str] = []
    try:
        return BACKEND.service(job, lines.append), lines
    finally:
        print("\n".join(lines))


def answer(host, timeout=2.0):
    """What the replica on ``host`` says over HTTP (from outside the host), or None."""
    try:
        with urllib.request.urlopen(f"http://{host.address}:{PORT}/", timeout=timeout) as r:
            return r.read().decode()
    except OSError:
        return None


def answers(fleet):
    return {h.user: answer(h) for h in fleet.hosts}


def server_processes(host):
    return host.processes("import http.server")


@pytest.fixture
def clean(ssh_fleet):
    """Every test starts and ends with the service undeployed."""
    service("undeploy", ssh_fleet.entries())
    yield
    for host in ssh_fleet.hosts:
        if host.proc is None:
            host.start()
    service("undeploy", ssh_fleet.entries())
    assert not any(server_processes(h) for h in ssh_fleet.hosts)


def test_deploy_puts_one_replica_per_host_and_a_second_deploy_changes_nothing(ssh_fleet, clean):
    hosts = ssh_fleet.hosts
    summary, log = service("deploy", ssh_fleet.entries(3))
    assert [r["slot"] for r in summary["replicas"]] == [0, 1, 2]
    assert {r["host"] for r in summary["replicas"]} == set(ssh_fleet.entries(3))
    got = answers(ssh_fleet)
    assert sorted(v for v in got.values() if v) == sorted(f"v1 {i} {h.user}" for i, h in enumerate(hosts[:3]))
    assert any("healthy after" in line for line in log)

    again, log = service("reconcile", ssh_fleet.entries(3))
    assert again["changes"] == [] and again["revision"] == summary["revision"]
    assert "3/3 replicas healthy" in log[-1] and "nothing to change" in log[-1]
    assert all(len(server_processes(h)) == 1 for h in hosts[:3])


def test_reconcile_restarts_a_killed_replica_in_place(ssh_fleet, clean):
    service("deploy", ssh_fleet.entries(3))
    victim = ssh_fleet.hosts[1]
    pid = server_processes(victim)[0].split()[0]
    import os
    import signal

    os.kill(int(pid), signal.SIGKILL)
    deadline = time.time() + 10
    while answer(victim) is not None and time.time() < deadline:
        time.sleep(0.1)
    assert answer(victim) is None

    summary, _ = service("reconcile", ssh_fleet.entries(3))
    assert any("replica 1" in c and "not running" in c for c in summary["changes"])
    assert answer(victim) == f"v1 1 {victim.user}"  # same slot, same host
    assert len(server_processes(victim)) == 1


def test_reconcile_moves_the_replicas_of_a_dead_host_to_a_free_one(ssh_fleet, clean, restart_host):
    h = ssh_fleet.hosts
    service("deploy", ssh_fleet.entries(4), replicas=3)  # 3 replicas on hosts 1-3; host 4 is free
    assert answer(h[3]) is None
    h[2].kill()
    restart_host(h[2])

    summary, log = service("reconcile", ssh_fleet.entries(4), replicas=3)
    assert any(h[2].entry in line and "unreachable" in line for line in log)
    assert answer(h[3]) == f"v1 2 {h[3].user}"  # slot 2 now lives on host 4
    assert {r["host"] for r in summary["replicas"]} == {h[0].entry, h[1].entry, h[3].entry}


def test_rolling_update_starts_each_new_replica_healthy_before_the_old_one_stops(ssh_fleet, clean):
    h = ssh_fleet.hosts
    first, _ = service("deploy", ssh_fleet.entries(4), replicas=3)
    second, log = service("deploy", ssh_fleet.entries(4), replicas=3, version="v2")
    assert second["revision"] != first["revision"]
    started = [i for i, line in enumerate(log) if "started" in line and second["revision"] in line]
    healthy = [i for i, line in enumerate(log) if "healthy after" in line and second["revision"] in line]
    stopped = [i for i, line in enumerate(log) if "stopping it" in line and first["revision"] in line]
    assert len(started) == len(healthy) == len(stopped) == 3
    for s, ok, stop in zip(started, healthy, stopped, strict=True):
        assert s < ok < stop  # new replica healthy before the old one stops
    assert started[1] > stopped[0] and started[2] > stopped[1]  # one slot at a time
    got = sorted(v for v in answers(ssh_fleet).values() if v)
    assert [v.split()[:2] for v in got] == [["v2", "0"], ["v2", "1"], ["v2", "2"]]
    assert sum(len(server_processes(x)) for x in h) == 3


def test_the_default_update_of_replicas_that_fill_every_host_replaces_them_one_at_a_time(ssh_fleet, clean):
    """One replica per host on one port, no host free: by default each is replaced in place while
    the other serves; asked for max_unavailable 0 it refuses and changes nothing."""
    hosts = ssh_fleet.entries(2)
    first, _ = service("deploy", hosts, replicas=2)
    with pytest.raises(
        ServiceError, match=rf"port {PORT} is taken on every reachable host and update\.max_unavailable"
    ):
        service("deploy", hosts, replicas=2, version="v2", update={"max_unavailable": 0})
    assert sorted(v.split()[0] for v in answers(ssh_fleet).values() if v) == ["v1", "v1"]
    second, log = service("deploy", hosts, replicas=2, version="v2")
    assert second["revision"] != first["revision"]
    in_place = [line for line in log if "update in place" in line]
    assert len(in_place) == 2, log
    assert sorted(v.split()[0] for v in answers(ssh_fleet).values() if v) == ["v2", "v2"]


def test_a_broken_revision_stops_the_rollout_and_the_old_replicas_keep_serving(ssh_fleet, clean):
    service("deploy", ssh_fleet.entries(4), replicas=3)
    broken = "echo 'cannot load the model: weights.bin missing'; exit 3"
    with pytest.raises(ServiceError) as err:
        service("deploy", ssh_fleet.entries(4), replicas=3, version="v3", run=broken)
    text = str(err.value)
    assert "rolling update" in text and "exit 3" in text and "weights.bin missing" in text
    assert "3 replica(s) keep serving" in text
    got = sorted(v for v in answers(ssh_fleet).values() if v)
    assert [v.split()[0] for v in got] == ["v1", "v1", "v1"]


def test_scale_down_and_undeploy_leave_no_process(ssh_fleet, clean):
    service("deploy", ssh_fleet.entries(4), replicas=4)
    summary, _ = service("deploy", ssh_fleet.entries(4), replicas=2)
    assert [r["slot"] for r in summary["replicas"]] == [0, 1]
    assert sum(len(server_processes(x)) for x in ssh_fleet.hosts) == 2
    service("undeploy", ssh_fleet.entries(4))
    assert not any(server_processes(x) for x in ssh_fleet.hosts)
    assert all(answer(x, timeout=0.5) is None for x in ssh_fleet.hosts)


def test_more_replicas_than_hosts_on_one_port_is_refused_with_what_to_do(ssh_fleet, clean):
    with pytest.raises(ServiceError, match="5 replicas need 5 hosts and 4 are reachable; add hosts"):
        service("deploy", ssh_fleet.entries(4), replicas=5)


def test_a_health_command_gates_replicas_that_share_a_host(ssh_fleet, clean):
    """No port: several replicas per host; the check is a command run on the host."""
    run = "touch ready-$FLEXORCH_REPLICA; exec sleep 600"
    summary, log = service(
        "deploy", ssh_fleet.entries(1), replicas=3, run=run, port=None, name="worker",
        health={"command": "test -f ready-$FLEXORCH_REPLICA", "grace": "10s"},
    )  # fmt: skip
    assert [r["host"] for r in summary["replicas"]] == [ssh_fleet.hosts[0].entry] * 3
    assert sum("health command exited 0" in line for line in log) == 3
    service("undeploy", ssh_fleet.entries(1), run=run, port=None, name="worker", health={"command": "true"})
    assert not ssh_fleet.hosts[0].processes("sleep 600")


@pytest.fixture
def t4_host(ssh_fleet):
    """Host 2 with the nvidia-smi stand-in: 2×A100 (GPU 0 busy) + 2×T4."""
    host = ssh_fleet.hosts[1]
    host.fake_nvidia_smi((DATA / "nvidia-smi-mixed.csv").read_text(), (DATA / "nvidia-smi-mixed-apps.csv").read_text())
    yield host
    host.fake_nvidia_smi(None)


def test_replicas_sharing_a_gpu_host_each_get_their_own_gpu(ssh_fleet, clean, t4_host):
    run = 'echo "gpus=$CUDA_VISIBLE_DEVICES" > gpu-$FLEXORCH_REPLICA; exec sleep 600'
    kw = dict(run=run, port=None, name="worker", resources={"gpus": "T4:1"},
              health={"command": "test -f gpu-$FLEXORCH_REPLICA", "grace": "10s"})  # fmt: skip
    try:
        summary, _ = service("deploy", [t4_host.entry], replicas=2, **kw)
        assert [r["host"] for r in summary["replicas"]] == [t4_host.entry] * 2
        runs = t4_host.home / ".flexorch" / "services"
        pinned = sorted(p.read_text().strip() for p in runs.glob("service-worker-*/*/*/gpu-*"))
        assert pinned == ["gpus=2", "gpus=3"]
        # a third T4 replica does not fit: the error names the host's GPUs and who holds them
        with pytest.raises(
            ServiceError, match=r"1 T4 GPU\(s\) wanted, 0 free.*2: Tesla T4 15360 MiB \(claimed by a flexorch"
        ):
            service("deploy", [t4_host.entry], replicas=3, **kw)
    finally:
        service("undeploy", [t4_host.entry], replicas=2, **kw)
    assert not t4_host.processes("sleep 600")


def test_a_replica_that_wants_a_gpu_skips_a_host_without_one(ssh_fleet, clean, t4_host):
    """Host 1 has no GPU (no nvidia-smi) and comes first: both replicas land on the T4 host."""
    plain = ssh_fleet.hosts[0]
    run = 'echo "gpus=$CUDA_VISIBLE_DEVICES" > gpu-$FLEXORCH_REPLICA; exec sleep 600'
    kw = dict(run=run, port=None, name="worker", resources={"gpus": "T4:1"},
              health={"command": "test -f gpu-$FLEXORCH_REPLICA", "grace": "10s"})  # fmt: skip
    try:
        first, log = service("deploy", [plain.entry, t4_host.entry], replicas=2, **kw)
        assert [r["host"] for r in first["replicas"]] == [t4_host.entry] * 2
        assert any(f"{plain.entry} cannot take it" in line for line in log), log
        assert not plain.processes("sleep 600")
        # a third does not fit anywhere: the error says why, host by host
        with pytest.raises(ServiceError, match=r"no host can start replica 2") as err:
            service("deploy", [plain.entry, t4_host.entry], replicas=3, **kw)
        assert plain.entry in str(err.value) and "1 T4 GPU(s) wanted, 0 free" in str(err.value)
        # a rolling update cannot surge (no free T4 anywhere); asked never to go below 2 serving, it
        # says how to go on, changing nothing
        with pytest.raises(ServiceError, match=r"max_unavailable is 0: unset it") as err:
            service("deploy", [plain.entry, t4_host.entry], replicas=2, version="v2",
                    update={"max_unavailable": 0}, **kw)  # fmt: skip
        assert "2 replica(s) keep serving" in str(err.value)
        # ... and by default it updates in place, one at a time, each new replica on the freed GPU
        summary, log = service("deploy", [plain.entry, t4_host.entry], replicas=2, version="v2", **kw)
        assert sum("updating it in place" in line for line in log) == 2, log
        assert [r["host"] for r in summary["replicas"]] == [t4_host.entry] * 2
        assert summary["revision"] != first["revision"]
        pinned = sorted(
            p.read_text().strip() for p in (t4_host.home / ".flexorch" / "services").glob("service-worker-*/*/*/gpu-*")
        )
        assert pinned == ["gpus=2", "gpus=3"]  # the live (v2) replicas' files; v1's were retired
    finally:
        service("undeploy", [plain.entry, t4_host.entry], replicas=2, **kw)
    assert not t4_host.processes("sleep 600")
