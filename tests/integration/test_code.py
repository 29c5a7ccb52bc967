"""Code that travels with the job (``code:``) on the real targets: the folder beside the spec reaches
the ssh hosts, a Slurm login node and the worker once per content, and each run starts in its own
copy of it."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.backends.local import LocalBackend
from flexorch_provider.backends.slurm import SlurmBackend
from flexorch_provider.backends.ssh import SshBackend
from flexorch_provider.code import bundle_for
from flexorch_provider.exceptions import SpecError
from flexorch_provider.resolve import load_workload
from tests.conftest import FLEET_CONN, LOGIN_CONN
from tests.gitrepo import git_repo
from tests.integration.follow import all_lines, wait_finished

TRAIN = 'import os, sys\nprint("epoch 1 of", open("lib/steps.txt").read().strip(), "in", os.getcwd() == os.environ["FLEXORCH_CODE_DIR"])\n'


@pytest.fixture
def laptop(tmp_path):
    """A data scientist's folder: the spec, train.py, a helper file and a git-ignored 100 MB file."""
    folder = tmp_path / "project"
    (folder / "lib").mkdir(parents=True)
    (folder / "train.py").write_text(TRAIN)
    (folder / "lib" / "steps.txt").write_text("100\n")
    (folder / ".gitignore").write_text("checkpoints/\n")
    (folder / "checkpoints").mkdir()
    with open(folder / "checkpoints" / "big.pt", "wb") as f:  # 100 MB, never read: it is ignored
        f.truncate(100 * 2**20)
    folder.chmod(0o755)
    return folder


def resolved(folder: Path, target: str, **fields) -> ResolvedJob:
    spec = {"name": "train", "kind": "batch", "target": target, "code": ".", "run": "python3 train.py", **fields}
    w = load_workload(spec)
    return ResolvedJob.for_run(w, f"d/code-{target}/{time.time_ns()}/-1", code=bundle_for(w, folder))


def run(backend, job: ResolvedJob, timeout: float = 60) -> tuple[list[str], list[str]]:
    handle = backend.submit(job)
    status = wait_finished(backend, handle, timeout)
    lines = all_lines(backend, handle)
    assert status.state == JobState.SUCCEEDED, lines
    return handle.notes, lines


def sent(notes: list[str]) -> int:
    """Bytes the submit sent for the code (0 when the target had it)."""
    [note] = [n for n in notes if n.startswith("code ")]
    if "nothing sent" in note:
        return 0
    number, unit = re.search(r"sent ([\d.]+) (B|KiB|MiB)", note).groups()
    return int(float(number) * {"B": 1, "KiB": 1024, "MiB": 2**20}[unit])


def test_on_an_ssh_host_the_edit_shows_and_a_second_run_sends_nothing(ssh_fleet, laptop):
    host = ssh_fleet.hosts[1]
    ssh = {"connection": FLEET_CONN, "hosts": [host.entry]}
    job = resolved(laptop, "ssh", ssh=ssh)
    assert job.code is not None and [f.path for f in job.code.files] == [".gitignore", "lib/steps.txt", "train.py"]
    notes, lines = run(SshBackend(), job)
    print(notes)
    assert "epoch 1 of 100 in True" in lines and 0 < sent(notes) < 4096, notes  # not the 100 MB file
    notes, lines = run(SshBackend(), resolved(laptop, "ssh", ssh=ssh))  # the same code again
    assert sent(notes) == 0 and "epoch 1 of 100 in True" in lines
    (laptop / "lib" / "steps.txt").write_text("250\n")  # edited on the laptop
    notes, lines = run(SshBackend(), resolved(laptop, "ssh", ssh=ssh))
    assert sent(notes) > 0 and "epoch 1 of 250 in True" in lines
    kept = host.home / ".flexorch" / "code"
    assert len(list(kept.iterdir())) >= 2 and not list(kept.glob("*/checkpoints"))


def test_a_job_starts_in_its_workdir_inside_its_code_and_may_write_there(ssh_fleet, laptop):
    host = ssh_fleet.hosts[1]
    job = resolved(laptop, "ssh", ssh={"connection": FLEET_CONN, "hosts": [host.entry]}, workdir="lib",
                   run='cat steps.txt; echo more > steps.txt; echo out > result.txt; ls')  # fmt: skip
    _, lines = run(SshBackend(), job)
    assert lines[:1] == ["100"] and "result.txt" in lines
    kept = host.home / ".flexorch" / "code" / job.code.digest / "lib" / "steps.txt"
    assert kept.read_text() == "100\n", "a run changed the kept bundle"


def test_on_slurm_through_the_login_node_and_with_the_local_clients(slurm_cluster, laptop):
    slurm = SlurmBackend()
    notes, lines = run(slurm, resolved(laptop, "slurm", slurm={"connection": LOGIN_CONN}), 120)
    assert "epoch 1 of 100 in True" in lines and sent(notes) > 0, (notes, lines)
    notes, lines = run(slurm, resolved(laptop, "slurm", slurm={"connection": LOGIN_CONN}), 120)
    assert "epoch 1 of 100 in True" in lines and sent(notes) == 0
    (laptop / "train.py").write_text(TRAIN.replace("epoch 1", "epoch 2"))
    notes, lines = run(slurm, resolved(laptop, "slurm"), 120)  # local clients, the worker's own home
    assert "epoch 2 of 100 in True" in lines, lines


def test_on_the_worker_itself(laptop, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXORCH_RUN_DIR", str(tmp_path / "runs"))
    notes, lines = run(LocalBackend(), resolved(laptop, "local"))
    assert "epoch 1 of 100 in True" in lines and any(n.startswith("code ") for n in notes)


def test_an_oversize_folder_is_refused_before_anything_is_submitted(ssh_fleet, laptop):
    (laptop / "weights.bin").write_bytes(os.urandom(2 * 2**20))
    with pytest.raises(SpecError, match=r"over code.max_size \(1.0 MiB\); the largest: weights.bin \(2.0 MiB\)"):
        resolved(laptop, "ssh", code={"path": ".", "max_size": "1Mi"},
                 ssh={"connection": FLEET_CONN, "hosts": [ssh_fleet.hosts[1].entry]})  # fmt: skip


def test_a_host_without_the_bundle_refuses_the_submit_in_words(ssh_fleet, laptop):
    """The submit sends the code first; a runner asked to start a job whose bundle it lacks says so."""
    from flexorch_provider.backends.base import job_document, submit_payload
    from flexorch_provider.backends.ssh import REMOTE_RUNS, runner
    from flexorch_provider.backends.sshpool import Host

    host = ssh_fleet.hosts[2]
    job = resolved(laptop, "ssh", ssh={"connection": FLEET_CONN, "hosts": [host.entry]})
    payload = submit_payload(job_document(job), {}, None)
    with pytest.raises(Exception, match=r"the job's code \(bundle [0-9a-f]{12}\) is not on .*: it is sent before"):
        runner(FLEET_CONN, Host.parse(host.entry), "submit", f"{REMOTE_RUNS}/{job.key_slug}", stdin=payload)
    assert not list((host.home / REMOTE_RUNS / job.key_slug).glob("*")), "a half-made attempt was left"


def test_code_from_a_git_repository_runs_on_an_ssh_host(ssh_fleet, tmp_path):
    """code.git on a target that receives bundles: the worker fetches the ref and sends its files."""
    origin = tmp_path / "origin"
    git_repo(origin, {"job/train.py": 'import os\nprint("from git", os.environ["FLEXORCH_CODE_DIGEST"][:12])\n'})
    host = ssh_fleet.hosts[1]
    spec = {"name": "train", "kind": "batch", "target": "ssh", "run": "python3 train.py",
            "code": {"git": origin.as_uri(), "ref": "main", "path": "job"},
            "ssh": {"connection": FLEET_CONN, "hosts": [host.entry]}}  # fmt: skip
    w = load_workload(spec)
    job = ResolvedJob.for_run(w, f"d/code-git/{time.time_ns()}/-1", code=bundle_for(w, None))
    notes, lines = run(SshBackend(), job)
    assert job.code is not None and f"from git {job.code.digest[:12]}" in lines
    assert any(n.startswith(f"code {job.code.digest[:12]}: 1 files") and origin.as_uri() in n for n in notes), notes
