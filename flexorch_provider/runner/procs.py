"""Process groups: kill, look for survivors, reap orphans, and cancel a job."""

import json
import os
import signal
import time

from .files import proc_stat, read_text, runner_alive, write_atomic
from .status import CANCEL_EXIT, status


def kill_group(pgid, sig):
    """Send ``sig`` to process group ``pgid``; False when there is no such group (or it is not ours)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def catches(pid, signum):
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask): one that would die of it
    (the default) or ignores it does not."""
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def warn_group(pgid, signum):
    """A warning signal to the processes of group ``pgid`` that handle it (a launcher such as torchrun,
    or a ``sleep``, would die of it and is left alone); the count signalled. Without /proc: the group."""
    if not os.path.isdir("/proc"):
        return 1 if kill_group(pgid, signum) else 0
    sent = 0
    for entry in os.listdir("/proc"):
        fields = proc_stat(entry) if entry.isdigit() else None
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z" and catches(entry, signum):
            try:
                os.kill(int(entry), signum)
                sent += 1
            except (ProcessLookupError, PermissionError):
                pass
    return sent


def group_alive(pgid):
    """True while any non-zombie process is in group ``pgid`` (zombies are already dead)."""
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            fields = proc_stat(entry) if entry.isdigit() else None
            if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def become_subreaper():
    """Orphans of the job (its background processes) are re-parented to us, so we can reap them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def reap():
    """Collect every child that has exited (without waiting for the others)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def reaped_within(pgid, seconds):
    """Reap orphaned children until group ``pgid`` is gone; False if it outlives ``seconds``."""
    deadline = time.time() + seconds
    while True:
        reap()
        if not group_alive(pgid):
            return True
        if time.time() >= deadline:
            return False
        time.sleep(0.05)


def cancel(run_dir, grace=10.0):
    """Ask the runner to stop the job; make sure the job's process group is gone (a job with a warning
    gets it first, and its ``before`` seconds, from its supervisor)."""
    run_dir = os.path.abspath(run_dir)
    pid = read_text(os.path.join(run_dir, "runner.pid"))
    pgid = read_text(os.path.join(run_dir, "job.pgid"))
    if runner_alive(pid):
        try:
            os.kill(int(pid.split()[0]), signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace + 5 + _warn_before(run_dir)
    while time.time() < deadline:
        if os.path.exists(os.path.join(run_dir, "result.json")) and not (
            pgid and pgid.isdigit() and group_alive(int(pgid))
        ):
            break
        time.sleep(0.1)
    if pgid and pgid.isdigit() and group_alive(int(pgid)):
        kill_group(int(pgid), signal.SIGKILL)
    _remove_container(run_dir)  # a supervisor that died cannot have removed it
    if not os.path.exists(os.path.join(run_dir, "result.json")):
        write_atomic(
            os.path.join(run_dir, "result.json"),
            json.dumps(
                {"state": "cancelled", "exit_code": CANCEL_EXIT, "finished_at": time.time(), "message": "cancelled"}
            ),
        )
    return status(run_dir)


def _warn_before(run_dir):
    """The seconds a cancel gives a job with a warning (job "warn") between the signal and its SIGTERM."""
    try:
        with open(os.path.join(run_dir, "job.json")) as f:
            return float((json.load(f).get("warn") or {}).get("before") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def _remove_container(run_dir):
    try:
        with open(os.path.join(run_dir, "job.json")) as f:
            job = json.load(f)
    except (OSError, ValueError):
        return
    if job.get("container"):
        from .containers import forget_registry_login, remove

        remove(job)
        forget_registry_login(run_dir)
