"""GPU inventory, GpuPoolSensor, placement and GPU-counting Airflow pools against real
servers: sshd hosts (with a test stand-in for nvidia-smi that prints nvidia-smi's CSV, or
flexorch-provider installed with a pynvml stand-in serving recorded devices),
the real Slurm with 4 fake a100 GPUs, and the Kubernetes emulator."""

from __future__ import annotations

import asyncio
import os
import shutil
import textwrap
import time
from pathlib import Path

import pendulum
import pytest

from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.backends.slurm import SlurmBackend
from flexorch_provider.cli.main import main
from flexorch_provider.inventory import inventory
from flexorch_provider.inventory.pools import load_pools
from flexorch_provider.resolve import load_workload
from flexorch_provider.sensors.gpu_pool import GpuPoolSensor
from tests.conftest import FLEET_CONN, KUBE_CONN

DATA = Path(__file__).parents[1] / "data"
L4_PAIR = ("0, GPU-0b1c2d3e-0000-4000-8000-00000000aa01, NVIDIA L4, 23034, 0, 0\n"
           "1, GPU-0b1c2d3e-0000-4000-8000-00000000aa02, NVIDIA L4, 23034, 0, 0\n")  # fmt: skip


@pytest.fixture(scope="module")
def gpu_hosts(ssh_fleet):
    """Host 1: 2×A100 (one busy) + 2×T4; host 2: 2×L4; host 3: no nvidia-smi."""
    h1, h2, h3 = ssh_fleet.hosts[:3]
    h1.fake_nvidia_smi((DATA / "nvidia-smi-mixed.csv").read_text(), (DATA / "nvidia-smi-mixed-apps.csv").read_text())
    h2.fake_nvidia_smi(L4_PAIR)
    yield h1, h2, h3
    h1.fake_nvidia_smi(None)
    h2.fake_nvidia_smi(None)


@pytest.fixture
def pools_file(tmp_path, ssh_fleet, gpu_hosts, monkeypatch):
    h1, h2, h3 = gpu_hosts
    path = tmp_path / "gpu_pools.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        lab:
          source: ssh
          connection: {FLEET_CONN}
          hosts: [{h1.entry}, {h2.entry}, {h3.entry}, "{h1.entry}:1"]
        cluster:
          source: slurm
          partition: gpu
        k8s:
          source: kubernetes
          connection: {KUBE_CONN}
          node_selector: {{pool: gpu}}
    """)
    )
    monkeypatch.setenv("FLEXORCH_GPU_POOLS", str(path))
    return path


def test_ssh_inventory_counts_models_per_host_and_names_hosts_it_cannot_use(pools_file, gpu_hosts):
    h1, h2, h3 = gpu_hosts
    inv = inventory(load_pools()["lab"])
    by_name = {n.name: n for n in inv.nodes}
    assert by_name[h1.entry].models() == {"A100": (2, 1), "T4": (2, 2)}
    assert by_name[h2.entry].models() == {"L4": (2, 2)} and by_name[h2.entry].gpus[0].memory_total == 23034
    assert by_name[h3.entry].state == "no-driver" and "nvidia-smi is not installed" in by_name[h3.entry].detail
    assert by_name[f"{h1.entry}:1"].state == "unreachable"
    assert (inv.total, inv.free) == (6, 5)


@pytest.fixture
def nvml_host(ssh_fleet):
    """Host 4 with flexorch-provider importable by a Python of its own (a wrapper on its PATH) and the
    pynvml stand-in serving a recorded H100 ×2 + L4; no nvidia-smi there."""
    h4 = ssh_fleet.hosts[3]
    site = ssh_fleet.base / "nvml-site"
    shutil.rmtree(site, ignore_errors=True)
    package = Path(__file__).parents[2] / "flexorch_provider"
    shutil.copytree(package, site / "flexorch_provider", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(DATA / "nvml-stand-in" / "pynvml.py", site / "pynvml.py")
    for path in [site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    wrapper = h4.bin_dir / "python-with-flexorch"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec python3 "$@"\n')
    wrapper.chmod(0o755)
    (h4.home / "nvml.json").write_text((DATA / "nvml-h100-l4.json").read_text())
    (h4.home / "nvml.json").chmod(0o644)
    yield h4
    wrapper.unlink()
    (h4.home / "nvml.json").unlink()
    shutil.rmtree(site)


def test_ssh_inventory_reads_nvml_through_flexorch_where_it_is_installed(tmp_path, monkeypatch, nvml_host):
    path = tmp_path / "gpu_pools.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        nvml: {{source: ssh, connection: {FLEET_CONN}, hosts: [{nvml_host.entry}], python: python-with-flexorch}}
        plain: {{source: ssh, connection: {FLEET_CONN}, hosts: [{nvml_host.entry}]}}
    """)
    )
    pools = load_pools(path)
    (node,) = inventory(pools["nvml"]).nodes
    assert node.state == "up", node.detail
    assert node.models() == {"H100": (2, 1), "L4": (1, 1)}
    assert [(g.memory_total, g.memory_used, g.utilization, g.processes) for g in node.gpus] == [
        (81559, 40213, 97, 1), (81559, 4, 0, 0), (23034, 0, None, 0)]  # fmt: skip
    # the same host through its plain python3 (no flexorch there) and no nvidia-smi: says what is missing
    (node,) = inventory(pools["plain"]).nodes
    assert node.state == "no-driver" and "nor flexorch-provider with pynvml for python3" in node.detail


def test_the_sensor_places_a_request_on_the_host_that_fits(pools_file, gpu_hosts):
    h1, h2, _ = gpu_hosts

    def poke(**kw):
        return GpuPoolSensor(task_id=f"s{time.time_ns()}", pool="lab", **kw).poke({})

    assert poke(gpus=1, gpu_type="A100").xcom_value["gpus"] == [1]
    assert poke(gpus=2, gpu_type="T4").xcom_value == {"pool": "lab", "source": "ssh", "host": h1.entry,
                                                      "gpus": [2, 3], "model": "T4"}  # fmt: skip
    l4 = poke(gpus=2, min_free_memory="20Gi").xcom_value  # the T4s have 15 GiB
    assert l4["host"] == h2.entry and l4["model"] == "L4"
    assert poke(gpus=2, gpu_type="A100").is_done is False  # one A100 is busy


DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from flexorch_provider import FlexOperator
from flexorch_provider.sensors.gpu_pool import GpuPoolSensor

with DAG("flex_gpu_placement", schedule=None, start_date=pendulum.datetime(2025, 1, 1)) as dag:
    wait = GpuPoolSensor(task_id="wait_gpus", pool="lab", gpus=2, gpu_type="T4", poke_interval=1, timeout=60)
    run = FlexOperator(
        task_id="train", poll_interval=0.2, placement="{{{{ ti.xcom_pull(task_ids='wait_gpus') }}}}",
        spec={{"name": "placed", "kind": "training", "target": "ssh", "run": "echo $(whoami) got $CUDA_VISIBLE_DEVICES",
              "ssh": {{"connection": {conn!r}, "hosts": {hosts!r}}}}},
    )
    wait >> run
"""


def test_a_placement_from_the_sensor_pins_the_job_to_its_host_and_gpus(pools_file, ssh_fleet, gpu_hosts):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    h1, h2, _ = gpu_hosts
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "flex_gpu_placement_dag.py"
    path.write_text(textwrap.dedent(DAG_FILE.format(conn=FLEET_CONN, hosts=[h2.entry, h1.entry])))
    db.resetdb()
    bag = DagBag(str(path))
    assert not bag.import_errors, bag.import_errors
    run = bag.dags["flex_gpu_placement"].test(logical_date=pendulum.datetime(2025, 5, 6, tz="UTC"))
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {"wait_gpus": "success", "train": "success"}
    logs = list((h1.home / ".flexorch" / "runs").glob("flex-gpu-placement-train-*/1/log"))
    assert logs and f"{h1.user} got 2,3" in logs[0].read_text()  # host 2 comes first in the spec, but has no T4
    assert not list((h2.home / ".flexorch" / "runs").glob("flex-gpu-placement-train-*"))


def _slurm_job(run, gpus):
    w = load_workload({"name": "inv", "kind": "batch", "target": "slurm", "run": run, "resources": {"gpus": gpus}})
    return ResolvedJob(run_key=f"inv/hog/{time.time_ns()}/-1", name="inv", kind="batch", workload=w, run=w.run)


def test_slurm_inventory_follows_jobs_and_the_sensor_waits_for_a_free_gpu(pools_file, slurm_cluster):
    pool = load_pools()["cluster"]
    assert [(n.name, n.models()) for n in inventory(pool).nodes] == [("localhost", {"A100": (4, 4)})]
    backend = SlurmBackend()
    hog = backend.submit(_slurm_job("sleep 6", "A100:3"))
    deadline = time.time() + 20
    while backend.poll([hog])[hog.job_id].state != JobState.RUNNING and time.time() < deadline:
        time.sleep(0.2)
    inv = inventory(pool)
    assert (inv.total, inv.free) == (4, 1)
    assert [g.index for g in inv.nodes[0].free()] == [3]
    sensor = GpuPoolSensor(task_id="wait", pool="cluster", gpus=2, gpu_type="A100")
    assert sensor.poke({}).is_done is False  # 1 free, 2 wanted
    # deferrable: the trigger fires once the job ends
    from flexorch_provider.triggers.gpu_pool import GpuPoolTrigger

    trigger = GpuPoolTrigger("cluster", None, 2, "A100", None, None, poke_interval=0.5)

    async def first_event():
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(asyncio.wait_for(first_event(), 60))
    assert payload["status"] == "success" and payload["placement"]["host"] == "localhost"
    assert backend.poll([hog])[hog.job_id].state == JobState.SUCCEEDED  # it fired because the job ended
    assert sensor.poke({}).is_done is True


def test_kubernetes_inventory_is_allocatable_minus_requests_of_live_pods(pools_file, kube_cluster):
    core = kube_cluster.core

    def node(name, gpus, model, ready=True):
        core.create_node({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": name, "labels": {"pool": "gpu", "nvidia.com/gpu.product": model}}})  # fmt: skip
        core.patch_node_status(name, {"status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})  # fmt: skip

    node("gpu-a", 8, "NVIDIA-A100-SXM4-80GB")
    node("gpu-b", 4, "NVIDIA-L4", ready=False)
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "cpu-only", "labels": {"pool": "cpu"}}})
    for name, n, phase in (("train-1", 3, "Running"), ("train-2", 2, "Pending"), ("old", 4, "Succeeded")):
        core.create_namespaced_pod("ml", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "gpu-a", "containers": [{"name": "m", "image": "x",
                     "resources": {"limits": {"nvidia.com/gpu": n}}}]}})  # fmt: skip
        core.patch_namespaced_pod_status(name, "ml", {"status": {"phase": phase}})
    inv = inventory(load_pools()["k8s"])
    by_name = {n.name: n for n in inv.nodes}
    assert set(by_name) == {"gpu-a", "gpu-b"}  # the pool's node selector
    assert by_name["gpu-a"].models() == {"A100": (8, 3)}  # 3 + 2 requested by live pods
    assert by_name["gpu-b"].state == "down" and by_name["gpu-b"].free() == []


def test_flexorch_gpus_prints_every_pool_and_pools_sync_sizes_airflow_pools(pools_file, gpu_hosts, slurm_cluster,
                                                                             kube_cluster, capsys):  # fmt: skip
    from airflow.models.pool import Pool
    from airflow.utils import db

    h1, h2, h3 = gpu_hosts
    assert main(["gpus", "--pool", "lab", "--pool", "cluster"]) == 0
    out = capsys.readouterr().out
    artifact = Path(__file__).parents[2] / "test-artifacts" / "flexorch-gpus.txt"
    artifact.parent.mkdir(exist_ok=True)
    artifact.write_text(out)  # what users see, kept with the test run
    lines = out.splitlines()
    assert lines[0].split() == ["POOL", "SOURCE", "NODE", "MODEL", "GPUS", "FREE", "FREE", "MEMORY", "STATE"]
    assert any(line.split()[:6] == ["lab", "ssh", h1.entry, "A100", "2", "1"] for line in lines)
    assert any(line.split()[:6] == ["lab", "ssh", h1.entry, "T4", "2", "2"] for line in lines)
    assert any(line.split()[:7] == ["lab", "ssh", h2.entry, "L4", "2", "2", "22Gi"] for line in lines)
    assert any(h3.entry in line and "no-driver" in line for line in lines)
    assert any(line.split()[:6] == ["cluster", "slurm", "localhost", "A100", "4", "4"] for line in lines)

    db.resetdb()
    assert main(["pools", "sync", "--pool", "lab", "--pool", "cluster"]) == 0
    assert "created  gpu-lab: 6 slots" in capsys.readouterr().out
    pool = Pool.get_pool("gpu-cluster")
    assert pool.slots == 4 and pool.include_deferred
    assert main(["pools", "sync", "--pool", "cluster"]) == 0
    assert "unchanged gpu-cluster: 4 slots" in capsys.readouterr().out.replace("unchanged gpu", "unchanged gpu")


@pytest.mark.gpu
def test_real_nvml_on_a_gpu_machine():
    """Runs only where an NVIDIA GPU and driver exist (never in CI): `pytest -m gpu`."""
    from flexorch_provider.inventory.sources import probe_local

    if shutil.which("nvidia-smi") is None:
        pytest.fail("this test needs an NVIDIA GPU and driver; run it with -m gpu on such a machine")
    (node,) = probe_local()
    assert node.state == "up" and node.gpus and all(g.memory_total for g in node.gpus)
