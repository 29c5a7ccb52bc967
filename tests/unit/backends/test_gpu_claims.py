"""GPU claims on a host (flexorch_provider.runner.gpus): a job that asks for GPUs gets free ones of its own, pinned
with CUDA_VISIBLE_DEVICES. Real runner, real processes; nvidia-smi is the test stand-in
printing recorded CSV (2×A100, GPU 0 busy with a compute process, + 2×T4)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

import flexorch_provider.dev.testbed.fleet
from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.backends.local import LocalBackend
from flexorch_provider.exceptions import SubmitError
from flexorch_provider.resolve import load_workload
from flexorch_provider.runner.gpus import GpuError, claim_gpus, gpu_model
from tests.integration.follow import all_lines, wait_finished

DATA = Path(__file__).parents[2] / "data"
STAND_IN = Path(flexorch_provider.dev.testbed.fleet.__file__).with_name("nvidia-smi-stand-in.sh")


@pytest.fixture
def gpu_host(tmp_path, monkeypatch):
    """This process's HOME and PATH become a host with the recorded GPUs."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    shutil.copy(STAND_IN, bin_dir / "nvidia-smi")
    (bin_dir / "nvidia-smi").chmod(0o755)
    shutil.copy(DATA / "nvidia-smi-mixed.csv", home / "nvidia-smi-gpus.csv")
    shutil.copy(DATA / "nvidia-smi-mixed-apps.csv", home / "nvidia-smi-apps.csv")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return home


def job(tmp_path, run, gpus, key, placement=None):
    spec = {"name": "g", "kind": "training", "target": "local", "run": run, "resources": {"gpus": gpus},
            "local": {"run_dir": str(tmp_path / "runs")}}  # fmt: skip
    w = load_workload(spec)
    return ResolvedJob(run_key=f"d/{key}/r/-1", name="g", kind="training", workload=w, run=w.run, placement=placement)


def visible(handle) -> str:
    lines = all_lines(LocalBackend(), handle)
    return next(line.split("=", 1)[1] for line in lines if line.startswith("gpus="))


def test_jobs_get_free_gpus_of_their_model_and_a_full_host_refuses_with_what_it_has(tmp_path, gpu_host):
    backend = LocalBackend()
    hold = 'echo "gpus=$CUDA_VISIBLE_DEVICES"; sleep 30'
    a100 = backend.submit(job(tmp_path, hold, "A100:1", "a"))  # GPU 0 runs a foreign process: 1 is free
    t4s = backend.submit(job(tmp_path, hold, "T4:2", "t"))
    time.sleep(0.5)
    assert visible(a100) == "1" and visible(t4s) == "2,3"
    with pytest.raises(SubmitError) as refused:
        backend.submit(job(tmp_path, hold, "A100:1", "b"))
    text = str(refused.value)
    assert "1 A100 GPU(s) wanted, 0 free" in text
    assert "0: NVIDIA A100-SXM4-80GB 81920 MiB (busy: compute processes)" in text
    assert "1: NVIDIA A100-SXM4-80GB 81920 MiB (claimed by a flexorch run)" in text
    assert not list((tmp_path / "runs").glob("d-b-*/*")), "a refused job leaves no attempt behind"
    with pytest.raises(SubmitError, match=r"1 T4 GPU\(s\) with 38146 MiB or more wanted, 0 free"):
        backend.submit(job(tmp_path, hold, "T4:40GB:1", "m"))  # the T4s have 15360 MiB
    # the claim lapses when its run ends: the same GPU goes to the next job
    backend.cancel(a100)
    wait_finished(backend, a100, 30)
    again = backend.submit(job(tmp_path, 'echo "gpus=$CUDA_VISIBLE_DEVICES"', "A100:1", "c"))
    assert wait_finished(backend, again, 30).state == JobState.SUCCEEDED and visible(again) == "1"
    backend.cancel(t4s)


def test_placement_indices_are_pinned_unless_another_run_holds_them(tmp_path, gpu_host):
    backend = LocalBackend()
    first = backend.submit(job(tmp_path, 'echo "gpus=$CUDA_VISIBLE_DEVICES"; sleep 30', "A100:2", "p1",
                               placement={"host": "x", "gpus": [2, 3]}))  # fmt: skip
    time.sleep(0.3)
    assert visible(first) == "2,3"
    with pytest.raises(SubmitError, match="GPU 3 by"):
        backend.submit(job(tmp_path, "true", "1", "p2", placement={"host": "x", "gpus": [3]}))
    backend.cancel(first)


def test_no_nvidia_smi_is_a_clear_refusal(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no nvidia-smi, even on a GPU machine
    with pytest.raises(SubmitError, match="cannot give the job its GPUs: no NVIDIA GPU here: nvidia-smi cannot be run"):
        LocalBackend().submit(job(tmp_path, "true", "1", "n"))


def test_claims_file_keeps_only_live_runs(tmp_path, gpu_host):
    claims = gpu_host / ".flexorch" / "gpu-claims.json"
    claims.parent.mkdir()
    claims.write_text(json.dumps({"2": str(tmp_path / "gone-run"), "3": str(tmp_path / "gone-too")}))
    assert claim_gpus(str(tmp_path / "new"), {"count": 2, "type": "T4"}) == [2, 3]
    assert json.loads(claims.read_text()) == {"2": str(tmp_path / "new"), "3": str(tmp_path / "new")}


def test_models_match_exactly_as_the_inventory_names_them(tmp_path, gpu_host):
    """An L4 request never gets an L40S, nor an A10 an A10G or an A100 (the runner's model names are
    the inventory's)."""
    from flexorch_provider.inventory.sources import model_name

    names = ["NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "NVIDIA L4", "Tesla T4", "NVIDIA H100 80GB HBM3",
             "NVIDIA GeForce RTX 4090", "NVIDIA RTX A1000", "NVIDIA A10G", "NVIDIA H100 NVL", "Quadro RTX 8000"]  # fmt: skip
    assert [gpu_model(n) for n in names] == [model_name(n) for n in names]
    (gpu_host / "nvidia-smi-gpus.csv").write_text(
        "0, GPU-aaaaaaaa-0000-4000-8000-000000000000, NVIDIA L40S, 46068, 0, 0\n"
        "1, GPU-bbbbbbbb-0000-4000-8000-000000000001, NVIDIA A10G, 23028, 0, 0\n"
    )
    (gpu_host / "nvidia-smi-apps.csv").write_text("")
    for model in ("L4", "A10", "A100"):
        with pytest.raises(GpuError, match=f"1 {model} GPU"):
            claim_gpus(str(tmp_path / model), {"count": 1, "type": model})
    assert claim_gpus(str(tmp_path / "l40s"), {"count": 1, "type": "L40S"}) == [0]


def test_nominal_memory_fits_what_the_board_reports_and_pinning_uses_pci_order(tmp_path, gpu_host):
    backend = LocalBackend()
    # the A100s report 81920 MiB: "80Gi" (81920) and "80GB" (76293) both fit; CUDA numbers like nvidia-smi
    handle = backend.submit(job(tmp_path, 'echo "gpus=$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER"', "A100:80Gi:1", "o"))
    assert wait_finished(backend, handle, 30).state == JobState.SUCCEEDED
    assert visible(handle) == "1 PCI_BUS_ID"


def test_unknown_busy_state_refuses_rather_than_guessing(tmp_path, gpu_host):
    stand_in = gpu_host.parent / "bin" / "nvidia-smi"
    stand_in.write_text(
        '#!/bin/sh\ncase "$1" in --query-gpu=*) cat "$HOME/nvidia-smi-gpus.csv" ;;\n'
        '  *) echo "Failed to query compute apps" >&2; exit 15 ;; esac\n'
    )
    with pytest.raises(GpuError, match="query-compute-apps exited 15: Failed to query"):
        claim_gpus(str(tmp_path / "x"), {"count": 1, "type": "T4"})
