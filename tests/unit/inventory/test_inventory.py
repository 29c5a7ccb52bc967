"""Inventory parsing and placement (our own logic), the NVML boundary, pools files."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from flexorch_provider.exceptions import ConfigurationError, SpecError
from flexorch_provider.inventory import find_placement
from flexorch_provider.inventory.model import Node, PoolInventory
from flexorch_provider.inventory.pools import load_pools
from flexorch_provider.inventory.sources import (
    SEPARATOR,
    model_name,
    parse_nvidia_smi,
    parse_probe,
    parse_sinfo,
    probe_local,
)

DATA = Path(__file__).parents[2] / "data"


def mixed_host() -> Node:
    text = (
        (DATA / "nvidia-smi-mixed.csv").read_text()
        + SEPARATOR
        + "\n"
        + (DATA / "nvidia-smi-mixed-apps.csv").read_text()
    )
    return Node("gpu-box", parse_nvidia_smi(text))


@pytest.mark.parametrize(
    ("raw", "model"),
    [("NVIDIA A100-SXM4-80GB", "A100"), ("Tesla T4", "T4"), ("NVIDIA GeForce RTX 4090", "RTX4090"),
     ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100"), ("NVIDIA L4", "L4"), ("a100", "A100")],
)  # fmt: skip
def test_model_names_are_normalized(raw, model):
    assert model_name(raw) == model


def test_mixed_models_on_one_host_are_counted_per_model():
    node = mixed_host()
    assert node.models() == {"A100": (2, 1), "T4": (2, 2)}
    gpu0 = node.gpus[0]
    assert gpu0.busy and gpu0.processes == 1 and gpu0.memory_free == 81920 - 78012 and gpu0.utilization == 97


def test_placement_respects_type_count_memory_and_utilization():
    inv = PoolInventory("lab", "ssh", [mixed_host()])
    assert find_placement(inv, 1, "A100")["gpus"] == [1]
    assert find_placement(inv, 2, "A100") is None  # GPU 0 runs a process
    assert find_placement(inv, 2, "t4") == {"pool": "lab", "source": "ssh", "host": "gpu-box", "gpus": [2, 3],
                                            "model": "T4"}  # fmt: skip
    assert find_placement(inv, 1, "T4", min_free_memory=20000) is None  # a T4 has 15 GiB
    assert find_placement(inv, 3) == {"pool": "lab", "source": "ssh", "host": "gpu-box", "gpus": [1, 2, 3],
                                      "model": "A100"}  # fmt: skip
    inv.nodes[0].state = "unreachable"
    assert find_placement(inv, 1) is None


def test_sinfo_lines_give_gpus_numbered_as_slurm_does_with_busy_indices():
    nodes = parse_sinfo(
        "n1|gpu|gpu:a100:2(S:0),gpu:t4:2|gpu:a100:1(IDX:0),gpu:t4:1(IDX:3)|mixed|\n"
        "n2|gpu|gpu:a100:4|gpu:a100:0(IDX:N/A)|idle|\n"
        "n3|gpu|gpu:a100:4|gpu:a100:0(IDX:N/A)|down*|\n"
    )
    n1, n2, n3 = nodes
    assert n1.models() == {"A100": (2, 1), "T4": (2, 1)} and [g.index for g in n1.free()] == [1, 2]
    assert len(n2.free()) == 4 and n3.state == "down" and n3.free() == []


def test_nvml_boundary_reads_devices_and_says_when_there_is_no_driver(monkeypatch):
    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: [b"NVIDIA H100 80GB HBM3", "NVIDIA L4"][h],
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=[80, 24][h] * 2**30, used=[10, 0][h] * 2**30),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=[55, 0][h]),
        nvmlDeviceGetComputeRunningProcesses=lambda h: [object()] if h == 0 else [],
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    (node,) = probe_local()
    assert [(g.model, g.memory_total, g.memory_used, g.utilization, g.busy) for g in node.gpus] == [
        ("H100", 81920, 10240, 55, True), ("L4", 24576, 0, 0, False)]  # fmt: skip

    def no_driver():
        raise NVMLError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=no_driver))
    (node,) = probe_local()
    assert node.state == "no-driver" and "no NVIDIA driver" in node.detail and node.gpus == []


def test_nvml_module_prints_json_for_remote_probes_and_exits_3_without_a_driver(tmp_path):
    """`python -m flexorch_provider.inventory.nvml` is what an ssh host with flexorch-provider runs."""
    env = {
        **os.environ,
        "PYTHONPATH": str(DATA / "nvml-stand-in"),
        "FLEXORCH_TEST_NVML": str(DATA / "nvml-h100-l4.json"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "flexorch_provider.inventory.nvml"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    gpus = parse_probe(done.stdout)
    assert [(g.model, g.busy, g.memory_free) for g in gpus] == [("H100", True, 41346), ("H100", False, 81555),
                                                                ("L4", False, 23034)]  # fmt: skip
    env["FLEXORCH_TEST_NVML"] = str(tmp_path / "absent.json")
    done = subprocess.run(
        [sys.executable, "-m", "flexorch_provider.inventory.nvml"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 3 and done.stdout == "" and "no NVIDIA driver (NVML: Driver Not Loaded)" in done.stderr


def test_probe_output_of_either_kind_is_parsed():
    csv = "0, GPU-a, NVIDIA A100-SXM4-80GB, 81920, 100, 3\n--- flexorch compute apps ---\n"
    assert [(g.model, g.memory_used) for g in parse_probe(csv)] == [("A100", 100)]
    text = '{"host": "h", "gpus": [{"index": 0, "name": "Tesla T4", "memory_total": 15360, "memory_used": 0}]}'
    assert [(g.model, g.memory_total, g.utilization) for g in parse_probe(text)] == [("T4", 15360, None)]


def test_pools_file_errors_name_the_field_and_a_missing_file_says_what_to_do(tmp_path):
    path = tmp_path / "gpu_pools.yaml"
    path.write_text("lab: {source: ssh, hosts: [a, a]}\nbig: {source: slurm, partion: gpu}\n")
    with pytest.raises(SpecError) as err:
        load_pools(path)
    text = str(err.value)
    assert (
        "lab.hosts: a listed more than once" in text and "big.partion: unknown field; did you mean 'partition'?" in text
    )
    with pytest.raises(ConfigurationError, match=r"no GPU pools file at .*FLEXORCH_GPU_POOLS"):
        load_pools(tmp_path / "missing.yaml")
    path.write_text("lab: {source: ssh, connection: lab_gpu, hosts: [gpu-1, 'ops@gpu-2:2222']}\n")
    assert load_pools(path)["lab"].airflow_pool == "gpu-lab"


def test_a_spec_with_a_gpu_pool_takes_one_airflow_pool_slot_per_gpu():
    from flexorch_provider import FlexOperator

    spec = {
        "name": "ft",
        "kind": "training",
        "target": "slurm",
        "run": "x",
        "gpu_pool": "lab",
        "resources": {"gpus": "A100:2", "nodes": 2},
    }
    op = FlexOperator(task_id="t", spec=spec)
    assert (op.pool, op.pool_slots) == ("gpu-lab", 4)
    assert FlexOperator(task_id="u", spec={**spec, "gpu_pool": None}).pool_slots == 1


def test_placement_from_a_rendered_xcom_is_parsed_and_checked():
    from flexorch_provider.operators.flex import parse_placement as _placement

    wanted = {"pool": "lab", "host": "gpu-1", "gpus": [0, 1]}
    assert _placement(str(wanted)) == wanted and _placement('{"host": "h", "gpus": [2]}')["gpus"] == [2]
    assert _placement("None") is None
    with pytest.raises(ConfigurationError, match="placement"):
        _placement("[1, 2]")


def test_the_example_pools_file_loads_and_spec_folders_skip_it():
    from flexorch_provider.spec.loader import iter_spec_files

    examples = Path(__file__).parents[3] / "spec_examples"
    assert set(load_pools(examples / "gpu_pools.yaml")) == {"lab", "a100", "inference-nodes", "worker"}
    found = [f.name for f in iter_spec_files([examples])]
    assert "gpu_pools.yaml" not in found and "hello-local.yaml" in found
