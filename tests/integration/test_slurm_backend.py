"""The slurm target against a real Slurm (flexorch_provider/dev/testbed/slurm.py): munge, slurmctld and
slurmd with 4 fake a100 GPUs, driven with the local clients and through a real sshd login
node (the first host of the test fleet, in its own network namespace)."""

from __future__ import annotations

import json
import time

import pytest

from flexorch_provider.backends import slurm
from flexorch_provider.backends.base import JobHandle, JobState, ResolvedJob
from flexorch_provider.backends.slurm import SlurmBackend
from flexorch_provider.exceptions import SubmitError
from flexorch_provider.resolve import load_workload
from tests.conftest import LOGIN_CONN
from tests.integration.follow import ALLREDUCE, HOSTILE_ENV, PRINT_ENV, all_lines, wait_finished

BACKEND = SlurmBackend()
_n = iter(range(1_000_000))


def make_job(run, *, gpus=None, env=None, secrets=None, key=None, login=False, **fields):
    spec = {"name": "sj", "kind": "training", "target": "slurm", "run": run, "env": env or {},
            "resources": {"gpus": gpus} if gpus else {}, **fields}  # fmt: skip
    if "resources" in fields and gpus:
        spec["resources"] = {**fields["resources"], "gpus": gpus}
    if login:
        spec["slurm"] = {"connection": LOGIN_CONN}
    w = load_workload(spec)
    return ResolvedJob.for_run(w, key or f"slurm_dag/train/run-{next(_n)}-{time.time_ns()}/-1", secrets=secrets)


def wait(handle, timeout=60, seen=None):
    return wait_finished(BACKEND, handle, timeout, 0.3, seen)


def log_of(handle):
    return all_lines(BACKEND, handle)


def test_success_gets_its_gpus_from_gres_and_streams_its_log(slurm_cluster):
    handle = BACKEND.submit(make_job("echo gpus=$CUDA_VISIBLE_DEVICES; echo done", gpus="A100:2"))
    status = wait(handle)
    assert status.state == JobState.SUCCEEDED and status.exit_code == 0
    assert log_of(handle) == ["gpus=0,1", "done"]


def test_failure_has_its_exit_code_and_log_tail(slurm_cluster):
    handle = BACKEND.submit(make_job("echo loading; echo 'CUDA error: out of memory' >&2; exit 3"))
    status = wait(handle)
    assert status.state == JobState.FAILED and status.exit_code == 3
    assert "exit code 3" in status.message
    assert log_of(handle)[-1] == "CUDA error: out of memory"


def test_a_job_pends_while_all_gpus_are_busy_then_runs(slurm_cluster):
    hog = BACKEND.submit(make_job("sleep 4", gpus="A100:4"))
    waiter = BACKEND.submit(make_job("echo got $CUDA_VISIBLE_DEVICES", gpus="A100:1"))
    seen: list = []
    status = wait(waiter, seen=seen)
    assert any(s.state == JobState.PENDING and "Resources" in s.message for s in seen), seen
    assert status.state == JobState.SUCCEEDED and log_of(waiter) == ["got 0"]
    assert wait(hog).state == JobState.SUCCEEDED


def test_env_values_arrive_byte_for_byte(slurm_cluster):
    handle = BACKEND.submit(make_job(PRINT_ENV, env=HOSTILE_ENV))
    assert wait(handle).state == JobState.SUCCEEDED
    [printed] = [line for line in log_of(handle) if line.startswith("{")]
    assert json.loads(printed) == HOSTILE_ENV


def test_cancel_leaves_nothing_in_the_queue(slurm_cluster):
    handle = BACKEND.submit(make_job("echo started; sleep 300"))
    deadline = time.time() + 30
    while BACKEND.poll([handle])[handle.job_id].state != JobState.RUNNING and time.time() < deadline:
        time.sleep(0.2)
    BACKEND.cancel(handle)  # asks the controller and returns: the follower's next poll sees the end
    assert wait(handle).state == JobState.CANCELLED
    assert not [j for j in slurm_cluster.live_jobs() if j.startswith(f"{handle.job_id}|")]
    BACKEND.cancel(handle)  # a job that already ended: nothing to do, no error


SAVER = (
    'python3 -c "import signal, sys, time\n'
    "def save(*a):\n    time.sleep(1); print('saved at step', step, flush=True)\n"
    "signal.signal(signal.SIGUSR1, save)\n"
    "signal.signal(signal.SIGTERM, lambda *a: (print('sigterm', flush=True), sys.exit(143)))\n"
    "step = 0\nwhile True:\n    step += 1; print('step', step, flush=True); time.sleep(0.5)\n\""
)


@pytest.mark.parametrize("nodes", [1, 2])
def test_a_cancel_with_a_warning_signals_first_and_cancels_before_later(slurm_cluster, nodes):
    """warn_before on Slurm: the cancel goes through the batch shell, which sends the job the warning
    (its process group; with several nodes every node's step), and has Slurm cancel it ``before`` later."""
    fields = {"warn_before": {"signal": "USR1", "before": "4s"}}
    if nodes > 1:
        fields |= {"resources": {"nodes": 2}, "slurm": MULTI}
    handle = BACKEND.submit(make_job(SAVER, **fields))
    deadline = time.time() + 60
    while time.time() < deadline and sum(line.endswith("step 12") for line in log_of(handle)) < nodes:
        time.sleep(0.3)  # running for 6 s: its batch shell listens
    BACKEND.cancel(handle)
    status = wait(handle, timeout=60)
    lines = log_of(handle)
    text = "\n".join(lines)
    assert status.state == JobState.CANCELLED, text
    print("\n".join(line for line in lines if not line.startswith("step")))
    assert "[flexorch] cancelled: SIGUSR1 to the job, its end in 4s (save what you need)" in lines, text
    assert sum(line.startswith("saved at step") for line in lines) == nodes, text  # every node saved
    assert text.index("[flexorch] cancelled: SIGUSR1") < text.index("saved at step") < text.index("sigterm")
    assert not [j for j in slurm_cluster.live_jobs() if j.startswith(f"{handle.job_id}|")]


def test_resubmitting_a_live_run_key_reattaches(slurm_cluster):
    job = make_job("sleep 3")
    first = BACKEND.submit(job)
    second = BACKEND.submit(make_job("sleep 3", key=job.run_key))
    assert first.job_id == second.job_id
    name = slurm.job_name(job)
    assert [j.split("|")[0] for j in slurm_cluster.jobs() if j.split("|")[1] == name] == [first.job_id]
    assert wait(first).state == JobState.SUCCEEDED


def test_an_external_scancel_fails_the_task_with_a_clear_message(slurm_cluster):
    handle = BACKEND.submit(make_job("sleep 300"))
    slurm_cluster.run("scancel", handle.job_id)
    status = wait(handle)
    assert status.state == JobState.CANCELLED and "cancelled (scancel)" in status.message


def test_impossible_requests_fail_at_once_with_what_the_cluster_offers(slurm_cluster):
    with pytest.raises(SubmitError) as err:
        BACKEND.submit(make_job("true", gpus="A100:9"))
    text = str(err.value)
    assert "--gres=gpu:a100:9" in text and "Requested node configuration is not available" in text
    assert "GRES gpu:a100:4" in text and "2 CPUs" in text
    with pytest.raises(SubmitError, match=r"--gres=gpu:h100:1.*offers.*gpu:a100:4"):
        BACKEND.submit(make_job("true", gpus="H100:1"))


def test_one_squeue_call_per_poll_for_many_jobs(slurm_cluster, monkeypatch):
    handles = [BACKEND.submit(make_job(f"echo job {i}")) for i in range(12)]
    calls: list[list[str]] = []
    real_run = slurm.Cluster.run

    def counting(self, argv, stdin=None):
        calls.append(list(argv))
        return real_run(self, argv, stdin)

    monkeypatch.setattr(slurm.Cluster, "run", counting)
    statuses = BACKEND.poll(handles)
    assert set(statuses) == {h.job_id for h in handles}
    assert [c[0] for c in calls] == ["squeue"]


def test_a_job_the_controller_forgot_is_settled_from_its_exit_code_file(slurm_cluster, tmp_path):
    import os
    from pathlib import Path

    out_dir = Path.home() / slurm.OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "flexorch-gone-4242424.rc").write_text("0\n")
    done = JobHandle("slurm", "4242424", "k", {"conn": None, "name": "flexorch-gone"})
    lost = JobHandle("slurm", "4242425", "k2", {"conn": None, "name": "flexorch-gone"})
    statuses = BACKEND.poll([done, lost])  # through the real sacct, which refuses: no accounting here
    os.unlink(out_dir / "flexorch-gone-4242424.rc")
    assert statuses["4242424"].state == JobState.SUCCEEDED
    assert statuses["4242425"].state == JobState.LOST and "no longer knows" in statuses["4242425"].message


SACCT_ROWS = """4242426|COMPLETED|0:0
4242427|OUT_OF_MEMORY|0:125
4242428|CANCELLED by 1000|0:15
4242429|FAILED|3:0
4242431|FAILED|1:0
4242431|COMPLETED|0:0
4242432|RUNNING|0:0
"""


def test_a_forgotten_job_is_settled_from_accounting_where_the_cluster_keeps_it(slurm_cluster, tmp_path, monkeypatch):
    """This test cluster keeps no accounting (the test above: real sacct refuses, exit-code files
    settle); here a stand-in ``sacct`` prints rows as a cluster with slurmdbd does."""
    import os
    from pathlib import Path

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\ncat <<EOF\n{SACCT_ROWS}EOF\n')
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out_dir = Path.home() / slurm.OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "flexorch-acct-4242430.rc").write_text("7\n")  # accounting has no row for this one yet
    (out_dir / "flexorch-acct-4242432.rc").write_text("0\n")  # accounting lags: its row still says RUNNING
    handles = [
        JobHandle("slurm", str(i), f"k{i}", {"conn": None, "name": "flexorch-acct"}) for i in range(4242426, 4242433)
    ]
    try:
        statuses = BACKEND.poll(handles)
    finally:
        os.unlink(out_dir / "flexorch-acct-4242430.rc")
        os.unlink(out_dir / "flexorch-acct-4242432.rc")
    assert statuses["4242426"].state == JobState.SUCCEEDED and statuses["4242426"].exit_code == 0
    oom = statuses["4242427"]
    assert oom.state == JobState.FAILED and "ran out of memory" in oom.message and oom.exit_code is None
    assert statuses["4242428"].state == JobState.CANCELLED and statuses["4242428"].exit_code == 128 + 15
    assert statuses["4242429"].state == JobState.FAILED and statuses["4242429"].exit_code == 3
    assert statuses["4242430"].state == JobState.FAILED and statuses["4242430"].exit_code == 7
    assert statuses["4242431"].state == JobState.SUCCEEDED  # a reused job id: the newest row counts
    assert statuses["4242432"].state == JobState.SUCCEEDED and "left the queue" in statuses["4242432"].message
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 1 and ",".join(h.job_id for h in handles) in calls[0]  # one call for all


def test_through_a_login_node_over_ssh_with_secrets_kept_out_of_the_script(slurm_cluster, ssh_fleet):
    login = ssh_fleet.hosts[0]
    job = make_job("echo user=$(whoami) token=${#API_TOKEN}", login=True, secrets={"API_TOKEN": "s3cr3t-value"})
    assert "s3cr3t-value" not in BACKEND.render(job)
    handle = BACKEND.submit(job)
    assert wait(handle).state == JobState.SUCCEEDED
    assert log_of(handle) == [f"user={login.user} token=12"]
    out_dir = login.home / slurm.OUT_DIR
    assert not list(out_dir.glob("*.secrets"))  # removed when the job ended
    assert not any("s3cr3t-value" in p.read_text() for p in out_dir.glob("*.sh"))


HOSTILE = ["it's", 'say "hi"', "$(touch /tmp/flexorch-pwned)", "`id`", "a;b", "line1\nline2", "\\$HOME", "*"]


@pytest.mark.parametrize("login", [False, True], ids=["local", "login-node"])
def test_hostile_args_and_env_reach_the_job_byte_for_byte(slurm_cluster, login):
    code = "import json, os as o, sys; print(json.dumps([sys.argv[1:], o.environ['V1'], o.environ['V2'], o.environ['FLEXORCH_RUN_KEY']]))"
    run_id = f"manual__it's $(touch /tmp/flexorch-pwned) `id`;{time.time_ns()}"
    job = make_job(["python3", "-c", code, *HOSTILE], env={"V1": HOSTILE[2], "V2": HOSTILE[5]}, login=login,
                   key=f"hostile_dag/task/{run_id}/-1")  # fmt: skip
    handle = BACKEND.submit(job)
    assert wait(handle).state == JobState.SUCCEEDED
    assert json.loads(log_of(handle)[-1]) == [HOSTILE, HOSTILE[2], HOSTILE[5], job.run_key]
    assert not __import__("os").path.exists("/tmp/flexorch-pwned")


def test_render_prints_the_exact_sbatch_script():
    text = BACKEND.render(make_job("python train.py", gpus="A100:2", timeout="90m",
                                   slurm={"partition": "gpu", "options": {"exclusive": True}}))  # fmt: skip
    for line in ("#SBATCH --gres=gpu:a100:2", "#SBATCH --time=90", "#SBATCH --partition=gpu", "#SBATCH --exclusive",
                 "#SBATCH --export=NONE"):  # fmt: skip
        assert line in text.splitlines()
    assert "python train.py" in text.splitlines()


def test_multi_node_jobs_run_one_task_per_node_with_the_contract():
    """Rendered only: the test cluster has one node (the contract's shell is run in
    tests/unit/backends/test_slurm_script.py; a real 2-node run is not covered yet)."""
    text = BACKEND.render(make_job(["torchrun", "train.py"], resources={"nodes": 2, "gpus": "A100:1"}))
    lines = text.splitlines()
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --ntasks-per-node=1" in lines
    assert 'export FLEXORCH_NNODES="$SLURM_NNODES"' in lines and "export FLEXORCH_GPUS_PER_NODE=1" in lines
    assert not any("WORLD_SIZE" in x for x in lines)  # it counts processes, which torchrun starts
    assert lines[-1].startswith("srun --export=ALL --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c ")
    assert "export PET_NODE_RANK=" in lines[-1] and "torchrun train.py" in lines


MULTI = {"connection": LOGIN_CONN, "partition": "multi"}  # nodes fx-n1 and fx-n2, two network namespaces


@pytest.fixture
def shared(tmp_path_factory):
    """A folder every node's job account can read (the script the job runs)."""
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="flexorch-multinode-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_bare_torchrun_forms_one_group_across_two_nodes(slurm_cluster, shared):
    """PyTorch's CPU build (Debian's python3-torch, gloo over TCP): 2 nodes × 2 processes, started by
    torchrun with no flags but --nproc-per-node, all-reduce 1+2+3+4 and every rank prints the sum."""
    (shared / "allreduce.py").write_text(ALLREDUCE)
    # Debian 12's torch 1.13 spells it --nproc_per_node (torch 2 takes --nproc-per-node too) and, under Python
    # 3.11, cannot parse its own default output settings (0 and 3 are not members when a Flag is iterated):
    # --redirects 2 --tee 1 name valid ones. Neither has to do with forming the group.
    run = f"torchrun --nproc_per_node 2 --redirects 2 --tee 1 {shared}/allreduce.py"
    job = make_job(run, resources={"nodes": 2}, slurm=MULTI)
    handle = BACKEND.submit(job)
    status = wait(handle, timeout=180)
    lines = log_of(handle)
    assert status.state == JobState.SUCCEEDED, "\n".join(lines[-60:])
    sums = sorted(line.split("]:", 1)[-1] for line in lines if " sum " in line)  # torchrun's "[default0]:" prefix
    print("\n".join(sums))
    assert [line.split(" on node")[0] for line in sums] == [f"rank {r} of 4" for r in range(4)], lines[-30:]
    assert all(line.endswith("sum 10") for line in sums)
    assert {line.split("(")[1].split(")")[0] for line in sums} == {"fx-n1", "fx-n2"}  # two nodes, one group
    assert {line.split(" on node ")[1].split()[0] for line in sums} == {"0", "1"}


def test_one_node_failing_ends_the_job_on_both(slurm_cluster, ssh_fleet):
    run = ('if [ "$FLEXORCH_NODE_RANK" = 1 ]; then sleep 2; echo "node 1 fails"; exit 3; fi\n'
           'echo "node 0 works on"; exec sleep 301\n')  # fmt: skip
    started = time.monotonic()
    handle = BACKEND.submit(make_job(run, resources={"nodes": 2}, slurm=MULTI))
    status = wait(handle, timeout=120)
    lines = log_of(handle)
    assert status.state == JobState.FAILED, lines
    assert "node 1 fails" in lines and "node 0 works on" in lines
    assert time.monotonic() - started < 90  # not the 301 s of node 0
    login = ssh_fleet.hosts[0]
    assert not login.processes("sleep 301"), "node 0's task outlived the job"


def test_cancelling_a_pending_job_leaves_no_secrets_file(slurm_cluster):
    from pathlib import Path

    hog = BACKEND.submit(make_job("sleep 30", gpus="A100:4"))
    job = make_job("echo never", gpus="A100:1", secrets={"API_TOKEN": "pending-secret-value"})
    handle = BACKEND.submit(job)
    secrets = Path.home() / slurm.OUT_DIR / f"{slurm.job_name(job)}.secrets"
    assert secrets.exists() and BACKEND.poll([handle])[handle.job_id].state == JobState.PENDING
    BACKEND.cancel(handle)  # the script never ran, so its exit trap never removed the file
    assert not secrets.exists()
    ended = wait(handle)
    assert ended.state == JobState.CANCELLED and ended.release  # its follower releases what an ended job holds
    BACKEND.cancel(hog)


def test_each_submit_sweeps_stale_secrets_and_old_outputs(slurm_cluster):
    import os
    from pathlib import Path

    out_dir = Path.home() / slurm.OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    old = time.time() - 20 * 24 * 3600
    stale = out_dir / "flexorch-gone-0000.secrets"  # a job the queue no longer has
    fresh = out_dir / "flexorch-starting-0000.secrets"  # another submit, between writing it and sbatch
    old_out, new_out = out_dir / "flexorch-gone-0000-1.out", out_dir / "flexorch-recent-0000-2.out"
    for f in (stale, fresh, old_out, new_out):
        f.write_text("export X=1\n")
    for f in (stale, old_out):
        os.utime(f, (old, old))
    handle = BACKEND.submit(make_job("echo swept"))
    assert not stale.exists() and not old_out.exists()
    assert fresh.exists() and new_out.exists()
    assert wait(handle).state == JobState.SUCCEEDED
    out = out_dir / f"{handle.data['name']}-{handle.job_id}.out"
    assert out.stat().st_mode & 0o077 == 0  # printed output (secrets included) is the account's alone
    for f in (fresh, new_out):
        f.unlink()


def test_flexorch_render_prints_the_script_that_sbatch_received(slurm_cluster, tmp_path, monkeypatch, capsys):
    from flexorch_provider.backends.base import run_key
    from flexorch_provider.cli.main import main

    spec = tmp_path / "render-me.yaml"
    spec.write_text(
        "name: render-me\nkind: training\ntarget: slurm\nsetup: echo setting up\nrun: |\n  echo 'quoted' \"$HOME\"\n\n  echo two\n"
        "env: {GREETING: 'hi there', CRLF: \"a\\r\\nb\"}\nresources: {gpus: 'A100:1'}\n"
    )
    run_id = f"manual__{time.time_ns()}"
    sent: list[bytes] = []
    real_run = slurm.Cluster.run

    def recording(self, argv, stdin=None):
        if "sbatch" in " ".join(argv):
            sent.append(stdin)
        return real_run(self, argv, stdin)

    monkeypatch.setattr(slurm.Cluster, "run", recording)
    w = load_workload(str(spec))
    handle = BACKEND.submit(ResolvedJob.for_run(w, run_key("render-me", "training", run_id)))
    assert wait(handle).state == JobState.SUCCEEDED
    assert main(["render", str(spec), "--target", "slurm", "--run-id", run_id]) == 0
    assert capsys.readouterr().out.encode() == sent[0]


def test_a_missing_workdir_fails_naming_it(slurm_cluster):
    handle = BACKEND.submit(make_job("echo never", workdir="no/such/dir"))
    assert wait(handle).state == JobState.FAILED
    assert any("workdir no/such/dir does not exist on " in line for line in log_of(handle)), log_of(handle)


def test_a_success_no_try_recorded_is_adopted_and_a_recorded_one_runs_anew(slurm_cluster, tmp_path):
    ran = tmp_path / "ran"
    job = make_job(f"echo once >> {ran}; echo done")
    first = BACKEND.submit(job)
    assert wait(first).state == JobState.SUCCEEDED
    adopted = BACKEND.submit(make_job("echo never", key=job.run_key))  # the worker died before recording it
    assert adopted.job_id == first.job_id and "had already succeeded" in adopted.notes[0]
    assert wait(adopted).state == JobState.SUCCEEDED and "done" in log_of(adopted)
    BACKEND.claim(adopted)  # the task recorded it; a cleared task runs the job again
    anew = BACKEND.submit(make_job(f"echo once >> {ran}", key=job.run_key))
    assert anew.job_id != first.job_id and anew.notes == []
    assert wait(anew).state == JobState.SUCCEEDED
    assert ran.read_text() == "once\nonce\n"


def test_an_unrecorded_failure_runs_again_and_says_so(slurm_cluster):
    job = make_job("exit 3")
    first = BACKEND.submit(job)
    assert wait(first).state == JobState.FAILED
    again = BACKEND.submit(make_job("true", key=job.run_key))
    assert again.job_id != first.job_id
    assert again.notes == [f"the previous try's Slurm job {first.job_id} ended with exit code 3 without its outcome "
                           "reaching Airflow: running it again"]  # fmt: skip
