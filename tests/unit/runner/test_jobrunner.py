"""The shared job runner, with real processes: its zipapp, the same file the ssh hosts run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flexorch_provider.backends.local import runner_argv  # the zipapp with -S, as on ssh hosts
from flexorch_provider.runner import replicas
from flexorch_provider.runner.files import runner_identity
from flexorch_provider.runner.procs import cancel
from flexorch_provider.runner.status import status


def start(run_dir: Path, job: dict, secrets: dict | None = None) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(json.dumps(job))
    if secrets:
        (run_dir / "secrets.json").write_text(json.dumps(secrets))
    subprocess.run([*runner_argv(), "start", str(run_dir)], check=True, timeout=30)


def start_dir(run_dir: str) -> None:
    """Start an attempt that prepare() made (its job.json is written)."""
    subprocess.run([*runner_argv(), "start", run_dir], check=True, timeout=30)


def wait_done(run_dir: Path, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = status(str(run_dir))
        if st["state"] not in ("pending", "running"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"job in {run_dir} did not finish: {status(str(run_dir))}")


def group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process in the group, as `ps` sees it."""
    out = subprocess.run(["ps", "-e", "-o", "pgid=,stat="], capture_output=True, text=True, check=True).stdout
    return any(p.split()[0] == str(pgid) and not p.split()[1].startswith("Z") for p in out.splitlines() if p.strip())


def test_success_and_output(tmp_path):
    start(tmp_path / "r", {"script": "echo one; echo two >&2", "env": {"X": "y"}})
    st = wait_done(tmp_path / "r")
    assert (st["state"], st["exit_code"]) == ("succeeded", 0)
    log = (tmp_path / "r" / "log").read_text().splitlines()
    assert log[:2] == ["one", "two"]


def test_failure_keeps_exit_code(tmp_path):
    start(tmp_path / "r", {"script": "echo about to fail; exit 7"})
    st = wait_done(tmp_path / "r")
    assert (st["state"], st["exit_code"]) == ("failed", 7)


def test_setup_runs_first_and_failure_skips_run(tmp_path):
    start(tmp_path / "ok", {"setup": "echo setup > marker", "script": "cat marker", "workdir": str(tmp_path)})
    assert wait_done(tmp_path / "ok")["state"] == "succeeded"
    assert "setup" in (tmp_path / "ok" / "log").read_text().splitlines()
    start(tmp_path / "bad", {"setup": "false\necho not reached", "script": "echo run ran"})
    st = wait_done(tmp_path / "bad")
    log = (tmp_path / "bad" / "log").read_text()
    assert st["state"] == "failed" and "run ran" not in log and "not reached" not in log
    assert "setup failed" in log


def test_timeout_kills_whole_group(tmp_path):
    start(tmp_path / "r", {"script": "sleep 60 & sleep 60", "timeout": 1, "kill_grace": 1})
    st = wait_done(tmp_path / "r")
    assert (st["state"], st["exit_code"]) == ("timeout", 124)
    pgid = int((tmp_path / "r" / "job.pgid").read_text())
    assert not group_alive(pgid)


def test_cancel_kills_whole_group_including_background(tmp_path):
    start(tmp_path / "r", {"script": "sleep 60 & echo started; sleep 60"})
    deadline = time.time() + 10
    while "started" not in (tmp_path / "r" / "log").read_text() if (tmp_path / "r" / "log").exists() else True:
        assert time.time() < deadline
        time.sleep(0.05)
    pgid = int((tmp_path / "r" / "job.pgid").read_text())
    assert group_alive(pgid)
    st = cancel(str(tmp_path / "r"))
    assert st["state"] == "cancelled"
    assert not group_alive(pgid)


def test_leftover_background_processes_are_stopped_after_success(tmp_path):
    start(tmp_path / "r", {"script": "sleep 60 & echo main done"})
    assert wait_done(tmp_path / "r")["state"] == "succeeded"
    pgid = int((tmp_path / "r" / "job.pgid").read_text())
    time.sleep(0.3)
    assert not group_alive(pgid)


def test_secrets_are_masked_and_deleted_from_disk(tmp_path):
    start(
        tmp_path / "r",
        {"script": 'echo "token=$TOKEN"; echo "twice $TOKEN $TOKEN"'},
        secrets={"TOKEN": "hunter2-secret-value"},
    )
    wait_done(tmp_path / "r")
    log = (tmp_path / "r" / "log").read_text()
    assert "hunter2" not in log
    assert "token=***" in log and "twice *** ***" in log
    assert not (tmp_path / "r" / "secrets.json").exists()
    assert "hunter2" not in (tmp_path / "r" / "job.json").read_text()


def test_worker_environment_does_not_leak(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://user:pw@db/airflow")
    start(tmp_path / "r", {"script": "env", "env": {"MINE": "1"}})
    wait_done(tmp_path / "r")
    log = (tmp_path / "r" / "log").read_text()
    assert "AIRFLOW__DATABASE" not in log and "MINE=1" in log and "FLEXORCH_RUN_DIR=" in log


NASTY = ["$(touch pwned1)", "`touch pwned2`", "a;touch pwned3", "'\"", "new\nline", "*", "$HOME", "--flag=x y"]


def test_argv_and_env_reach_the_process_byte_for_byte(tmp_path):
    out = tmp_path / "out.json"
    code = "import json,os,sys; json.dump({'argv': sys.argv[1:], 'env': os.environ['NASTY']}, open(sys.argv[-1] + '', 'w'))"
    start(
        tmp_path / "r",
        {"argv": [sys.executable, "-c", code, *NASTY, str(out)], "env": {"NASTY": "\n".join(NASTY)},
         "workdir": str(tmp_path)},
    )  # fmt: skip
    assert wait_done(tmp_path / "r")["state"] == "succeeded"
    got = json.loads(out.read_text())
    assert got["argv"][:-1] == NASTY and got["env"] == "\n".join(NASTY)
    assert not list(tmp_path.glob("pwned*"))


def test_runner_killed_hard_is_reported_lost(tmp_path):
    start(tmp_path / "r", {"script": "sleep 30"})
    deadline = time.time() + 10
    while not (tmp_path / "r" / "job.pgid").exists():
        assert time.time() < deadline
        time.sleep(0.05)
    pid = int((tmp_path / "r" / "runner.pid").read_text().split()[0])
    pgid = int((tmp_path / "r" / "job.pgid").read_text())
    os.kill(pid, signal.SIGKILL)
    os.killpg(pgid, signal.SIGKILL)
    time.sleep(0.2)
    st = status(str(tmp_path / "r"))
    assert st["state"] == "lost" and "died without a result" in st["message"]


def test_missing_workdir_is_a_clear_failure(tmp_path):
    start(tmp_path / "r", {"script": "true", "workdir": str(tmp_path / "nope")})
    st = wait_done(tmp_path / "r")
    assert st["state"] == "failed"
    log = (tmp_path / "r" / "log").read_text()
    assert f"workdir {tmp_path / 'nope'} does not exist on " in log and "fix workdir in the spec" in log


@pytest.mark.parametrize("mode", ["status", "cancel"])
def test_cli_modes_print_json(tmp_path, mode):
    start(tmp_path / "r", {"script": "true"})
    wait_done(tmp_path / "r")
    out = subprocess.run([*runner_argv(), mode, str(tmp_path / "r")], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[0])["state"] == "succeeded"


def test_replica_whose_process_just_died_is_reported_dead_not_running(tmp_path):
    """The supervisor records a death a moment after the process is gone; `replicas` waits for that
    record instead of calling a killed replica running (a reconcile then restarts it)."""
    run_dir = tmp_path / "svc" / "0-abc" / "1"
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(json.dumps({"service": {"slot": 0, "revision": "abc"}}))
    (run_dir / "runner.pid").write_text(runner_identity())  # a live "supervisor": this process
    dead = subprocess.Popen(["true"], preexec_fn=os.setpgrp)
    dead.wait()
    (run_dir / "job.pgid").write_text(str(dead.pid))

    def record_death():
        time.sleep(0.5)
        (run_dir / "result.json").write_text(json.dumps({"state": "failed", "exit_code": 137, "message": "x"}))

    import threading

    threading.Thread(target=record_death, daemon=True).start()
    [row] = replicas.replicas(str(tmp_path / "svc"))
    assert (row["state"], row["exit_code"]) == ("failed", 137)


def test_replica_with_a_live_process_is_running_at_once(tmp_path, monkeypatch):
    """A replica whose process group is alive is running: `replicas` answers without waiting for a
    death record (the wait is only for a supervisor whose job is already gone)."""
    run_dir = tmp_path / "svc" / "0-abc" / "1"
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(json.dumps({"service": {"slot": 0, "revision": "abc"}}))
    (run_dir / "runner.pid").write_text(runner_identity())
    (run_dir / "job.pgid").write_text(str(os.getpgid(0)))
    import threading

    waits: list[float] = []
    caller, real_sleep = threading.current_thread(), time.sleep
    # time.sleep is process-wide: count only this thread's (a test server's thread may be sleeping too)
    monkeypatch.setattr(replicas.time, "sleep",
                        lambda s: waits.append(s) if threading.current_thread() is caller else real_sleep(s))  # fmt: skip
    [row] = replicas.replicas(str(tmp_path / "svc"))
    assert row["state"] == "running" and waits == []


def test_an_unclaimed_success_is_adopted_a_claimed_one_runs_anew(tmp_path):
    """A try whose worker died before recording the job's success: the next try takes that
    result instead of running the job again. Once claimed (recorded), a try (a cleared task) runs anew."""
    from flexorch_provider.runner.attempts import attempt_notes, claim, prepare

    key = tmp_path / "key"
    first = prepare(str(key), {"script": f"echo once >> {tmp_path / 'ran'}"}, {})
    start_dir(first["run_dir"])
    wait_done(Path(first["run_dir"]))
    again = prepare(str(key), {"script": "echo twice"}, {})
    assert again["adopted"] and again["run_dir"] == first["run_dir"] and again["reattached"]
    assert "had already succeeded" in attempt_notes(again)[0]
    claim(first["run_dir"])
    anew = prepare(str(key), {"script": "true"}, {})
    assert not anew["reattached"] and anew["attempt"] == 2 and "previous" not in anew
    assert (tmp_path / "ran").read_text() == "once\n"


def test_an_unclaimed_failure_runs_again_saying_so(tmp_path):
    from flexorch_provider.runner.attempts import attempt_notes, prepare

    key = tmp_path / "key"
    first = prepare(str(key), {"script": "exit 3"}, {})
    start_dir(first["run_dir"])
    wait_done(Path(first["run_dir"]))
    again = prepare(str(key), {"script": "true"}, {})
    assert again["attempt"] == 2 and not again["reattached"] and again["previous"]["state"] == "failed"
    assert (
        "ended failed (exit code 3) without its outcome reaching Airflow: running it again" in attempt_notes(again)[0]
    )


def test_a_service_replica_that_ended_is_started_again_not_adopted(tmp_path):
    from flexorch_provider.runner.attempts import prepare

    key = tmp_path / "replica"
    doc = {"script": "true", "service": {"name": "s", "slot": 0, "revision": "r"}}
    first = prepare(str(key), doc, {})
    start_dir(first["run_dir"])
    wait_done(Path(first["run_dir"]))
    again = prepare(str(key), doc, {})
    assert again["attempt"] == 2 and not again["reattached"]


def test_a_warning_signal_comes_before_the_timeout_and_the_jobs_shell_outlives_it(tmp_path):
    """warn: the job's processes get SIGUSR1 ``before`` seconds ahead of the timeout (its script's own
    shell keeps running), then the timeout stops it as before."""
    saved = tmp_path / "saved"
    (tmp_path / "train.py").write_text(
        f"import signal, time\nsignal.signal(signal.SIGUSR1, lambda *a: open({str(saved)!r}, 'w').write('saved'))\n"
        "time.sleep(3)\nprint('training goes on', flush=True)\ntime.sleep(30)\n"
    )
    script = f"echo before\npython3 {tmp_path / 'train.py'}\necho not reached\n"
    start(tmp_path / "r", {"script": script, "timeout": 4, "kill_grace": 1, "warn": {"signal": "USR1", "before": 2}})
    st = wait_done(tmp_path / "r", timeout=20)
    log = (tmp_path / "r" / "log").read_text()
    assert st["state"] == "timeout" and saved.read_text() == "saved", log
    assert re.search(r"SIGUSR1 to the job's 2 process\(es\) that handle it: its timeout comes in [12]s", log), log
    assert "training goes on" in log and "not reached" not in log  # python took the warning and went on


def test_a_cancel_warns_first_and_gives_the_job_its_time_before_sigterm(tmp_path):
    """warn on a cancel: the job's processes get the signal at once, SIGTERM only ``before`` seconds later
    (a job that saves in time ends on its own); the cancel call waits for it."""
    saved = tmp_path / "saved"
    (tmp_path / "train.py").write_text(
        "import signal, sys, time\n"
        f"def save(*a):\n    time.sleep(1)\n    open({str(saved)!r}, 'w').write('saved')\n    print('saved', flush=True)\n"
        "signal.signal(signal.SIGUSR1, save)\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('sigterm', flush=True), sys.exit(143)))\n"
        "print('training', flush=True)\ntime.sleep(60)\n"
    )
    start(tmp_path / "r", {"script": f"python3 {tmp_path / 'train.py'}", "kill_grace": 1,
                           "warn": {"signal": "USR1", "before": 3}})  # fmt: skip
    deadline = time.time() + 10
    while "training" not in ((tmp_path / "r" / "log").read_text() if (tmp_path / "r" / "log").exists() else ""):
        assert time.time() < deadline
        time.sleep(0.05)
    st = cancel(str(tmp_path / "r"), grace=1)
    log = (tmp_path / "r" / "log").read_text()
    assert st["state"] == "cancelled" and saved.read_text() == "saved", log
    # the warning, the job's save (it takes 1 s), and only then SIGTERM, which the job saw
    order = [log.index(s) for s in ("SIGUSR1 to the job's 2 process(es) that handle it: cancelled: SIGTERM in 3s", "\nsaved\n",
                                    "cancelled: stopping the job (SIGTERM", "\nsigterm\n")]  # fmt: skip
    assert order == sorted(order), log


def test_a_checkpoint_dir_is_the_same_for_every_attempt_of_a_run_key(tmp_path, monkeypatch):
    from flexorch_provider.runner.attempts import prepare

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    job = {"run_key": "d/t/r/-1", "script": "true", "checkpoint_dir": "ckpt/d-t-1234"}
    first = prepare(str(tmp_path / "key"), job, {})
    doc = json.loads((Path(first["run_dir"]) / "job.json").read_text())
    assert doc["env"]["FLEXORCH_CHECKPOINT_DIR"] == str(tmp_path / "home" / "ckpt" / "d-t-1234")
    assert (tmp_path / "home" / "ckpt" / "d-t-1234").is_dir()
    (Path(first["run_dir"]) / "result.json").write_text(json.dumps({"state": "failed", "exit_code": 1}))
    second = prepare(str(tmp_path / "key"), job, {})
    assert second["attempt"] == 2
    assert json.loads((Path(second["run_dir"]) / "job.json").read_text())["env"]["FLEXORCH_CHECKPOINT_DIR"] == \
        doc["env"]["FLEXORCH_CHECKPOINT_DIR"]  # fmt: skip
