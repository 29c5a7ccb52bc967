"""The ssh target against real sshd hosts (flexorch_provider/dev/testbed/fleet.py).

Success, failure with exit code and log, cancel leaves no remote process, a dead host is
skipped, a host killed mid-run → the retry lands on another host, reattach instead of a
second submission, placement all (parallel, failures per host), GPU pinning from a
placement, and injection fuzz: hostile names/env/args reach the job byte for byte.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.backends.ssh import SshBackend
from flexorch_provider.exceptions import HostError, SubmitError
from flexorch_provider.resolve import load_workload
from tests.integration.conftest import FLEET_CONN
from tests.integration.follow import HOSTILE_ENV, PRINT_ENV, all_lines, wait_finished

BACKEND = SshBackend()
DATA = Path(__file__).parents[1] / "data"
_counter = iter(range(1_000_000))


def make_job(run, hosts, *, placement="any", env=None, key=None, placement_hint=None, secrets=None, gpus=None,
             conn=FLEET_CONN):  # fmt: skip
    spec = {"name": "t", "kind": "batch", "target": "ssh", "run": run, "env": env or {},
            "ssh": {"connection": conn, "hosts": hosts, "placement": placement}}  # fmt: skip
    if gpus:
        spec["resources"] = {"gpus": gpus}
    w = load_workload(spec)
    return ResolvedJob(
        run_key=key or f"dag/task/run-{next(_counter)}-{time.time_ns()}/-1", name="t", kind="batch", workload=w,
        run=w.run, env=dict(w.env), secrets=secrets or {}, placement=placement_hint,
    )  # fmt: skip


def wait(handle, timeout=30):
    return wait_finished(BACKEND, handle, timeout)


def all_logs(handle):
    return all_lines(BACKEND, handle)


def test_success_runs_on_the_first_host_as_its_user(ssh_fleet):
    job = make_job('echo "I am $(whoami) in $PWD"', ssh_fleet.entries(2), secrets={"TOKEN": "tok-123456"})
    handle = BACKEND.submit(job)
    assert handle.data["hosts"][0]["host"]["user"] == "flexorch-h1"
    status = wait(handle)
    assert status.state == JobState.SUCCEEDED and status.exit_code == 0
    lines = all_logs(handle)
    # without a workdir the job runs in its own run directory under the host account's home
    assert any(line.startswith(f"I am flexorch-h1 in {ssh_fleet.hosts[0].home}/.flexorch/runs/") for line in lines)


def test_env_values_arrive_byte_for_byte(ssh_fleet):
    handle = BACKEND.submit(make_job(PRINT_ENV, [ssh_fleet.hosts[0].entry], env=HOSTILE_ENV))
    assert wait(handle).state == JobState.SUCCEEDED
    [printed] = [line for line in all_logs(handle) if line.startswith("{")]
    assert json.loads(printed) == HOSTILE_ENV


def test_failure_has_exit_code_and_log(ssh_fleet):
    handle = BACKEND.submit(make_job("echo about to fail; exit 3", ssh_fleet.entries(1)))
    status = wait(handle)
    assert status.state == JobState.FAILED and status.exit_code == 3
    assert "about to fail" in all_logs(handle)


def test_cancel_leaves_no_remote_process(ssh_fleet):
    host = ssh_fleet.hosts[0]
    handle = BACKEND.submit(make_job("sleep 313 & sleep 314; wait", [host.entry]))
    deadline = time.time() + 10
    while not host.processes("sleep 314") and time.time() < deadline:
        time.sleep(0.1)
    assert host.processes("sleep 313") and host.processes("sleep 314")
    BACKEND.cancel(handle)
    assert BACKEND.poll([handle])[handle.job_id].state == JobState.CANCELLED
    assert host.processes("sleep 31") == []  # the background child too: the whole process group


def test_reattach_instead_of_a_second_submission(ssh_fleet):
    host = ssh_fleet.hosts[1]
    job = make_job("echo start >> $HOME/starts-reattach; sleep 2; echo finished", [host.entry])
    (host.home / "starts-reattach").unlink(missing_ok=True)
    first = BACKEND.submit(job)
    again = BACKEND.submit(job)  # a retry or a restarted worker while the job runs
    assert again.job_id == first.job_id and again.data == first.data
    assert wait(first).state == JobState.SUCCEEDED
    assert (host.home / "starts-reattach").read_text().splitlines() == ["start"]
    third = BACKEND.submit(job)  # over, but no try recorded it (its worker died): adopted, not run again
    assert third.job_id == first.job_id and "had already succeeded" in third.notes[0]
    BACKEND.claim(third)  # a try recorded it: a cleared task runs it again
    fourth = BACKEND.submit(job)
    assert fourth.job_id != first.job_id and fourth.notes == []
    wait(fourth)
    assert (host.home / "starts-reattach").read_text().splitlines() == ["start", "start"]


def test_a_live_attempt_on_a_later_host_is_found(ssh_fleet):
    h1, h2 = ssh_fleet.hosts[0], ssh_fleet.hosts[1]
    key = f"dag/task/found-{time.time_ns()}/-1"
    on_h2 = BACKEND.submit(make_job("sleep 3", [h2.entry], key=key))
    both = BACKEND.submit(make_job("sleep 3", [h1.entry, h2.entry], key=key))
    assert both.job_id == on_h2.job_id  # not a second job on h1
    found = BACKEND.find(make_job("sleep 3", [h1.entry, h2.entry], key=key))  # one round, nothing started
    assert found is not None and (found.job_id, found.data) == (on_h2.job_id, on_h2.data)
    BACKEND.cancel(both)
    assert wait(both).state == JobState.CANCELLED
    assert BACKEND.find(make_job("sleep 3", [h1.entry, h2.entry], key=key)) is None


def test_dead_host_is_skipped_and_reported(ssh_fleet, restart_host):
    dead, live = ssh_fleet.hosts[2], ssh_fleet.hosts[3]
    dead.kill()
    restart_host(dead)  # after the test, whatever its outcome
    handle = BACKEND.submit(make_job("echo ok", [dead.entry, live.entry]))
    assert handle.data["hosts"][0]["host"]["user"] == live.user
    # the task log names the host it skipped, and why, in words
    assert handle.notes == [f"skipped ssh host {dead.entry}: cannot connect: connection refused on port 22"]
    assert wait(handle).state == JobState.SUCCEEDED
    with pytest.raises(SubmitError, match=rf"no ssh host could take the job: {dead.entry}: cannot connect"):
        BACKEND.submit(make_job("echo never", [dead.entry]))


def test_host_killed_mid_run_then_the_retry_lands_on_another_host(ssh_fleet, restart_host):
    first, second = ssh_fleet.hosts[2], ssh_fleet.hosts[3]
    job = make_job("echo start; sleep 60", [first.entry, second.entry])
    handle = BACKEND.submit(job)
    assert handle.data["hosts"][0]["host"]["user"] == first.user
    first.kill()
    restart_host(first)
    with pytest.raises(HostError, match="cannot get job status"):
        BACKEND.poll([handle])  # the trigger turns repeated failures into a failed try
    retry = BACKEND.submit(job)  # same run key: the next try
    assert retry.data["hosts"][0]["host"]["user"] == second.user
    BACKEND.cancel(retry)


def test_placement_all_runs_everywhere_and_names_failed_hosts(ssh_fleet):
    entries = ssh_fleet.entries(3)
    ok = BACKEND.submit(make_job('echo "deployed on $(whoami)"', entries, placement="all"))
    assert len(ok.data["hosts"]) == 3
    assert wait(ok).state == JobState.SUCCEEDED
    lines = all_logs(ok)
    for host in ssh_fleet.hosts[:3]:
        assert f"[{host.entry}] deployed on {host.user}" in lines

    bad = BACKEND.submit(make_job('test "$(whoami)" != flexorch-h2 || exit 7', entries, placement="all"))
    status = wait(bad)
    assert status.state == JobState.FAILED and status.exit_code == 7
    assert f"failed on 1 of 3 hosts: {ssh_fleet.hosts[1].entry}: failed (exit 7)" in status.message


def test_placement_all_starts_nothing_when_a_host_is_down(ssh_fleet, restart_host):
    down = ssh_fleet.hosts[3]
    down.kill()
    restart_host(down)
    marker = f"all-or-nothing-{time.time_ns()}"
    with pytest.raises(SubmitError, match=rf"nothing was started because 1 of 2 .*{down.entry}"):
        BACKEND.submit(make_job(f"touch $HOME/{marker}", [ssh_fleet.hosts[0].entry, down.entry], placement="all"))
    time.sleep(0.5)
    assert not (ssh_fleet.hosts[0].home / marker).exists()


def test_gpu_placement_pins_cuda_visible_devices(ssh_fleet):
    host = ssh_fleet.hosts[1]
    job = make_job('echo "gpus=$CUDA_VISIBLE_DEVICES"', ssh_fleet.entries(3),
                   placement_hint={"host": host.entry, "gpus": [1, 3]})  # fmt: skip
    handle = BACKEND.submit(job)
    assert handle.data["hosts"][0]["host"]["user"] == host.user
    wait(handle)
    assert "gpus=1,3" in all_logs(handle)


def test_render_shows_the_exact_commands(ssh_fleet):
    job = make_job("python train.py --lr '0.1; rm -rf /'", ssh_fleet.entries(2), secrets={"TOKEN": "v4lue"})
    text = BACKEND.render(job)
    assert ssh_fleet.hosts[0].entry in text and ssh_fleet.hosts[1].entry in text
    assert "submit .flexorch/runs/" in text
    assert "/bin/sh -c 'python train.py --lr '\"'\"'0.1; rm -rf /'\"'\"''" in text
    assert '"TOKEN": "<secret>"' in text and "v4lue" not in text


PIECES = [*"ab ;|&$()`'\"\\\n\t*?~#!{}[]<>=-", "$(touch $HOME/pwned)", "`touch $HOME/pwned`", "; touch $HOME/pwned",
          "\u00e9", "--", "-c"]  # fmt: skip
HOSTILE = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(HOSTILE, min_size=1, max_size=3), value=HOSTILE, run_id=HOSTILE)
def test_hostile_args_env_and_run_ids_arrive_byte_for_byte(ssh_fleet, args, value, run_id):
    code = "import json, os, sys; print('RESULT ' + json.dumps([sys.argv[1:], os.environ['HOSTILE']]))"
    key = f"dag/task/{run_id}-{time.time_ns()}/-1"  # run ids are user-chosen text too
    job = make_job(["python3", "-c", code, *args], ssh_fleet.entries(1), env={"HOSTILE": value}, key=key)
    handle = BACKEND.submit(job)
    assert wait(handle).state == JobState.SUCCEEDED
    result = [line for line in all_logs(handle) if line.startswith("RESULT ")]
    assert json.loads(result[0][len("RESULT ") :]) == [args, value]
    assert not (ssh_fleet.hosts[0].home / "pwned").exists()


def test_the_runner_is_installed_on_a_host_that_lacks_it(ssh_fleet):
    import shutil

    from flexorch_provider.backends import sshpool
    from flexorch_provider.runner import bundle

    host = ssh_fleet.hosts[3]
    shutil.rmtree(host.home / ".flexorch" / "bin", ignore_errors=True)
    sshpool.forget(FLEET_CONN, sshpool.Host.parse(host.entry))  # a fresh connection knows nothing
    handle = BACKEND.submit(make_job("echo installed", [host.entry]))
    assert wait(handle).state == JobState.SUCCEEDED
    assert (host.home / bundle.relative_path()).read_bytes() == bundle.pyz_bytes()


def test_the_submit_answers_with_the_jobs_status_on_every_host(ssh_fleet):
    handle = BACKEND.submit(make_job("sleep 30", ssh_fleet.entries(2), placement="all"))
    try:
        assert handle.first_status is not None and handle.first_status.state == JobState.RUNNING
        assert handle.first_status.message == "2 of 2 hosts still running"
    finally:
        BACKEND.cancel(handle)


def test_a_command_that_exits_before_reading_its_input_reports_its_exit_not_a_closed_socket(ssh_fleet):
    """A runner not installed yet exits at once (saying so) while the submit's job JSON is
    still being sent: the channel closes under the sender. That must read as the command's own exit
    (so the runner gets installed), not as a dead host. 8 MiB is more than one SSH window, so the
    send is still going when the command has ended."""
    from flexorch_provider.backends import sshpool

    host = sshpool.Host.parse(ssh_fleet.hosts[3].entry)
    code, out, err = sshpool.on_host(
        FLEET_CONN, host, lambda s: s.exec(["sh", "-c", "echo gone >&2; exit 3"], stdin=b"x" * (8 << 20))
    )
    assert (code, out, err) == (3, "", "gone\n")


def test_a_gpu_job_skips_a_host_without_gpus_and_is_pinned_to_a_free_one(ssh_fleet):
    plain, gpu_host = ssh_fleet.hosts[0], ssh_fleet.hosts[2]
    gpu_host.fake_nvidia_smi(
        (DATA / "nvidia-smi-mixed.csv").read_text(), (DATA / "nvidia-smi-mixed-apps.csv").read_text()
    )
    try:
        handle = BACKEND.submit(make_job('echo "gpus=$CUDA_VISIBLE_DEVICES"', [plain.entry, gpu_host.entry],
                                         gpus="A100:1"))  # fmt: skip
        assert handle.data["hosts"][0]["host"]["user"] == gpu_host.user  # the first host has no GPU
        assert wait(handle).state == JobState.SUCCEEDED
        assert "gpus=1" in all_logs(handle)  # GPU 0 runs a foreign compute process
        with pytest.raises(SubmitError) as refused:
            BACKEND.submit(make_job("true", [plain.entry, gpu_host.entry], gpus="T4:3"))
        text = str(refused.value)
        assert f"{plain.entry}" in text and "no NVIDIA GPU here" in text
        assert "3 T4 GPU(s) wanted, 2 free" in text
    finally:
        gpu_host.fake_nvidia_smi(None)


def test_a_host_whose_key_is_not_the_connections_is_refused_in_words(ssh_fleet, tmp_path, monkeypatch):
    """The fleet's connection names the hosts' key (no "No Host Key Verification"); a host that shows
    another key (a man in the middle) is not connected to, and the error says why."""
    import subprocess

    assert json.loads(ssh_fleet.connection_json())["extra"]["no_host_key_check"] is False
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    conn = json.loads(ssh_fleet.connection_json())
    conn["extra"]["host_key"] = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    monkeypatch.setenv("AIRFLOW_CONN_FLEX_WRONG_HOST_KEY", json.dumps(conn))  # its own id: no pooled session
    host = ssh_fleet.hosts[1]
    with pytest.raises(SubmitError, match=rf"{host.entry}: cannot connect: the host's key is not the one"):
        BACKEND.submit(make_job("echo never", [host.entry], conn="flex_wrong_host_key"))
