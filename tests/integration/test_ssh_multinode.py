"""Multi-node jobs on the ssh fleet (resources.nodes > 1): one node per host, started all or none, one
group that a bare torchrun forms, and one failing node ending the job on every host.

The hosts are network namespaces on one bridge (flexorch_provider/dev/testbed/fleet.py) that share
this machine's hostname: gloo finds its interface by resolving the hostname, which here is no host's
own address, so the jobs name the interface (GLOO_SOCKET_IFNAME=eth0), as users of multi-homed
machines do.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from flexorch_provider.backends.base import JobState, ResolvedJob, job_document, submit_payload
from flexorch_provider.backends.ssh import REMOTE_RUNS, SshBackend, runner
from flexorch_provider.backends.sshpool import Host
from flexorch_provider.exceptions import NoCapacityError
from flexorch_provider.follower import Follower
from flexorch_provider.resolve import load_workload
from tests.integration.conftest import FLEET_CONN
from tests.integration.follow import ALLREDUCE, all_lines, wait_finished

BACKEND = SshBackend()
DATA = Path(__file__).parents[1] / "data"
GLOO = {"GLOO_SOCKET_IFNAME": "eth0"}


def make_job(run, hosts, *, nodes=2, env=None, gpus=None, key=None, **fields) -> ResolvedJob:
    spec = {"name": "t", "kind": "training", "target": "ssh", "run": run, "env": env or {},
            "resources": {"nodes": nodes, **({"gpus": gpus} if gpus else {})},
            "ssh": {"connection": FLEET_CONN, "hosts": hosts}, **fields}  # fmt: skip
    w = load_workload(spec)
    return ResolvedJob(run_key=key or f"dag/train/run-{time.time_ns()}/-1", name="t", kind="training", workload=w,
                       run=w.run, env=dict(w.env))  # fmt: skip


@pytest.fixture
def shared():
    """A folder every host's account can read (the script the job runs)."""
    folder = Path(tempfile.mkdtemp(prefix="flexorch-multinode-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def live_on(host, job: ResolvedJob) -> dict:
    return json.loads(runner(FLEET_CONN, Host.parse(host.entry), "live", f"{REMOTE_RUNS}/{job.key_slug}"))


def test_a_bare_torchrun_forms_one_group_across_two_ssh_hosts(ssh_fleet, shared):
    (shared / "allreduce.py").write_text(ALLREDUCE)
    (shared / "allreduce.py").chmod(0o644)
    h1, h2, h3 = ssh_fleet.hosts[:3]
    run = f"torchrun --nproc_per_node 2 --redirects 2 --tee 1 {shared}/allreduce.py"  # flags: see test_slurm_backend
    job = make_job(run, [h1.entry, h2.entry, h3.entry], env=GLOO)
    handle = BACKEND.submit(job)
    assert [p["host"]["user"] for p in handle.data["hosts"]] == [h1.user, h2.user]  # the first two, in order
    assert handle.job_id.endswith("@2 nodes") and f"the group meets at {h1.address}:" in handle.notes[-1]
    status = wait_finished(BACKEND, handle, timeout=120)
    lines = all_lines(BACKEND, handle)
    assert status.state == JobState.SUCCEEDED and status.message == "succeeded on all 2 nodes", "\n".join(lines[-60:])
    sums = sorted(line for line in lines if " sum " in line)
    print("\n".join(sums))
    assert [line.split("]:", 1)[1].split(" on node")[0] for line in sums] == [f"rank {r} of 4" for r in range(4)]
    assert all(line.endswith("sum 10") for line in sums)
    # every node's lines carry its node rank; each node ran on its own host (its own address)
    for line in sums:
        node = line.split(" on node ")[1].split()[0]
        assert line.startswith(f"[rank {node}] ") and line.split(" at ")[1].startswith(
            (h1 if node == "0" else h2).address + ":"
        )
    assert {line.split(" on node ")[1].split()[0] for line in sums} == {"0", "1"}
    assert not (h3.home / REMOTE_RUNS / job.key_slug).exists()  # the third host was not used


def test_one_node_failing_stops_the_other_and_names_the_node(ssh_fleet):
    h1, h2 = ssh_fleet.hosts[:2]
    run = ('if [ "$FLEXORCH_NODE_RANK" = 1 ]; then sleep 2; echo "node 1 fails"; exit 3; fi\n'
           'echo "node 0 works on"; exec sleep 302\n')  # fmt: skip
    handle = BACKEND.submit(make_job(run, [h1.entry, h2.entry]))
    status = wait_finished(BACKEND, handle, timeout=60)
    assert status.state == JobState.FAILED and status.exit_code == 3 and status.release
    assert status.message.startswith(f"rank 1 on {h2.entry} ended failed (exit 3)"), status.message
    step = Follower(BACKEND, handle).observe(status)  # what the trigger does with it
    assert any("removed it" in note for note in step.notes), step.notes
    assert "[rank 1] node 1 fails" in step.lines and "[rank 0] node 0 works on" in step.lines
    assert not h1.processes("sleep 302"), "node 0 outlived the group"
    assert BACKEND.poll([handle])[handle.job_id].state == JobState.FAILED  # rank 1's failure, not the cancel


def test_cancel_stops_every_node_and_warns_each_first(ssh_fleet):
    """With warn_before, every node's job gets the signal ahead of its SIGTERM (each node's runner gives it)."""
    h1, h2 = ssh_fleet.hosts[:2]
    run = ("exec python3 -c \"import os, signal, time; signal.signal(signal.SIGUSR1, lambda *a: print("
           "'rank', os.environ['FLEXORCH_NODE_RANK'], 'saves', flush=True)); time.sleep(303)\"")  # fmt: skip
    handle = BACKEND.submit(make_job(run, [h1.entry, h2.entry], warn_before={"signal": "USR1", "before": "1s"}))
    deadline = time.time() + 10
    while (
        not (h1.processes("import os, signal, time") and h2.processes("import os, signal, time"))
        and time.time() < deadline
    ):
        time.sleep(0.1)
    assert h1.processes("import os, signal, time") and h2.processes("import os, signal, time"), all_lines(
        BACKEND, handle
    )
    BACKEND.cancel(handle)
    assert BACKEND.poll([handle])[handle.job_id].state == JobState.CANCELLED
    assert not h1.processes("import os, signal, time") and not h2.processes("import os, signal, time")
    lines = all_lines(BACKEND, handle)
    for rank in (0, 1):
        said = [x for x in lines if x.startswith(f"[rank {rank}]")]
        assert f"[rank {rank}] rank {rank} saves" in said, lines
        assert said.index(f"[rank {rank}] rank {rank} saves") < said.index(
            f"[rank {rank}] [flexorch] cancelled: stopping the job (SIGTERM to its process group)"), lines  # fmt: skip


def test_all_or_none_a_host_without_the_gpus_is_passed_over_and_no_group_leaves_nothing_held(ssh_fleet):
    """GPUs are claimed by count on each node; a host that cannot give them is skipped for the next one;
    when too few can, the held nodes are withdrawn before anything ran, and their GPUs are free."""
    h1, h2, h3 = ssh_fleet.hosts[:3]
    for h in (h1, h3):
        h.fake_nvidia_smi((DATA / "nvidia-smi-mixed.csv").read_text(), "")
    try:
        run = 'echo "node $FLEXORCH_NODE_RANK gpus=$CUDA_VISIBLE_DEVICES per-node=$FLEXORCH_GPUS_PER_NODE"'
        handle = BACKEND.submit(make_job(run, [h3.entry, h2.entry, h1.entry], gpus="A100:1"))
        assert [p["host"]["user"] for p in handle.data["hosts"]] == [h3.user, h1.user]  # h2 has no GPU
        assert wait_finished(BACKEND, handle, timeout=60).state == JobState.SUCCEEDED
        lines = all_lines(BACKEND, handle)
        assert sorted(x for x in lines if "gpus=" in x) == [
            "[rank 0] node 0 gpus=0 per-node=1",
            "[rank 1] node 1 gpus=0 per-node=1",
        ], lines

        job = make_job("touch $HOME/never-ran", [h3.entry, h2.entry], gpus="A100:1")
        with pytest.raises(NoCapacityError) as refused:
            BACKEND.submit(job)
        text = str(refused.value)
        assert "resources.nodes: 2 needs 2 of the ssh hosts to take a node each; only 1 could" in text
        assert f"{h2.entry}: GPUs: no NVIDIA GPU here" in text
        assert not live_on(h3, job)  # h3's held node was withdrawn
        assert not (h3.home / "never-ran").exists()
        claims = json.loads((h3.home / ".flexorch" / "gpu-claims.json").read_text())  # they lapse with their runs
        mine = [d for d in claims.values() if f"/{job.key_slug}/" in d]
        ended = [json.loads(runner(FLEET_CONN, Host.parse(h3.entry), "status", d))["state"] for d in mine]
        assert ended == ["cancelled"], claims  # the held node's claim: its run is over, so the GPU is free
    finally:
        for h in (h1, h3):
            h.fake_nvidia_smi(None)


def test_a_second_submit_reattaches_and_a_part_of_a_group_is_replaced(ssh_fleet):
    h1, h2 = ssh_fleet.hosts[:2]
    for h in (h1, h2):
        (h.home / "starts-group").unlink(missing_ok=True)
    job = make_job('echo start >> "$HOME/starts-group"; sleep 3', [h1.entry, h2.entry])
    first = BACKEND.submit(job)
    again = BACKEND.submit(job)  # a retry, a restarted worker
    assert again.data == first.data and any("reattached to node 1" in n for n in again.notes)
    assert BACKEND.find(job) is not None and BACKEND.find(job).data == first.data
    assert wait_finished(BACKEND, first, timeout=30).state == JobState.SUCCEEDED
    assert [(h.home / "starts-group").read_text() for h in (h1, h2)] == ["start\n", "start\n"]
    BACKEND.claim(first)

    # a submit cut off between its rounds left one held node on h2: it is stopped, a whole group starts
    payload = submit_payload(dict(job_document(job), gang={"nodes": 2, "hold_s": 60}), {}, None)
    part = json.loads(runner(FLEET_CONN, Host.parse(h2.entry), "submit", f"{REMOTE_RUNS}/{job.key_slug}",
                             stdin=payload))  # fmt: skip
    assert part["gang"]["held"] and BACKEND.find(job) is None  # not a whole group
    handle = BACKEND.submit(job)
    assert any("a part of an earlier group of this run key was there" in n for n in handle.notes), handle.notes
    assert wait_finished(BACKEND, handle, timeout=30).state == JobState.SUCCEEDED
    assert [(h.home / "starts-group").read_text() for h in (h1, h2)] == ["start\nstart\n"] * 2
    held = json.loads(runner(FLEET_CONN, Host.parse(h2.entry), "status", part["run_dir"]))
    assert held["state"] == "cancelled" and held["message"] == "cancelled before its group started"


def test_render_shows_both_rounds_and_the_contract(ssh_fleet):
    h1, h2 = ssh_fleet.hosts[:2]
    text = BACKEND.render(make_job("torchrun --nproc-per-node 8 train.py", [h1.entry, h2.entry], gpus="A100:8"))
    assert "resources.nodes 2: one node on each of the first 2" in text and " go '.flexorch/runs/" in text
    assert f'"FLEXORCH_NODE_ADDRS": "{h1.address},{h2.address}"' in text
    assert '"PET_NNODES": "2"' in text and '"FLEXORCH_GPUS_PER_NODE": "8"' in text
    assert '"MASTER_PORT": "<free on rank 0>"' in text and "WORLD_SIZE" not in text


def test_killing_one_nodes_process_ends_the_job_on_both_hosts(ssh_fleet):
    import os
    import signal

    h1, h2 = ssh_fleet.hosts[:2]
    handle = BACKEND.submit(make_job('echo "node $FLEXORCH_NODE_RANK up"; exec sleep 304', [h1.entry, h2.entry]))
    deadline = time.time() + 10
    while not (h1.processes("sleep 304") and h2.processes("sleep 304")) and time.time() < deadline:
        time.sleep(0.1)
    os.kill(int(h2.processes("sleep 304")[0].split()[0]), signal.SIGKILL)  # rank 1, killed from outside
    status = wait_finished(BACKEND, handle, timeout=30)
    assert status.state == JobState.FAILED and status.message.startswith(
        f"rank 1 on {h2.entry} ended failed (exit 137)"
    )
    Follower(BACKEND, handle).observe(status)
    assert not h1.processes("sleep 304"), "rank 0 outlived the group"
