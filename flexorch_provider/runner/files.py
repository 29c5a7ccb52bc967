"""Files of a run directory: atomic and private writes, reads, and the supervisor's identity."""

import json
import os


def write_atomic(path, data):
    """Write ``data`` to ``path`` whole or not at all (a temp file, fsync, rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def write_private(path, text):
    """Create ``path`` readable by this account only; an existing file is an error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_text(path):
    """The stripped text of ``path``, or None when it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def read_job(run_dir):
    """``RUN_DIR/job.json`` as a dict ({} when missing or unreadable)."""
    try:
        with open(os.path.join(run_dir, "job.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...), or None."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid):
    """Kernel start time of ``pid`` (ticks since boot), or None without /proc (or for a zombie)."""
    fields = proc_stat(pid)
    if not fields or fields[0] == "Z" or len(fields) < 20:
        return None
    return fields[19]


def runner_identity():
    """'PID STARTTIME' of this process, what the supervisor writes to runner.pid."""
    return "%d %s" % (os.getpid(), start_time(os.getpid()) or "-")


def runner_alive(identity):
    """``identity`` is 'PID STARTTIME' from runner.pid; the start time guards against pid reuse."""
    parts = (identity or "").split()
    if not parts or not parts[0].isdigit():
        return False
    pid = int(parts[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = start_time(pid)
    if len(parts) > 1 and parts[1] != "-" and os.path.exists("/proc/%d" % pid):
        return started == parts[1]
    return True
