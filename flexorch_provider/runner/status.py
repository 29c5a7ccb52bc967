"""The state of a run directory, from its files alone (see the package docstring)."""

import json
import os
import time

from .files import read_job, read_text, runner_alive

LAUNCH_GRACE_S = 30  # a run dir with no runner.pid after this long is lost
TIMEOUT_EXIT = 124
CANCEL_EXIT = 143
LIVE = ("pending", "running")


def status(run_dir):
    """{"run_dir", "log_size", "state", ...}: result.json once written, else what the pid says."""
    run_dir = os.path.abspath(run_dir)
    out = {"run_dir": run_dir}
    result = read_text(os.path.join(run_dir, "result.json"))
    log_path = os.path.join(run_dir, "log")
    try:
        out["log_size"] = os.path.getsize(log_path)
    except OSError:
        out["log_size"] = 0
    if result:
        try:
            out.update(json.loads(result))
            return out
        except ValueError:
            pass
    if not os.path.isdir(run_dir):
        out.update(state="lost", message="run directory %s is gone" % run_dir)
        return out
    pid = read_text(os.path.join(run_dir, "runner.pid"))
    if pid:
        if runner_alive(pid):
            if os.path.exists(os.path.join(run_dir, "hold")):  # a node of a group, before ``go`` (gang.HOLD)
                out.update(state="pending", pid=int(pid.split()[0]), message="held until every node has started")
            else:
                out.update(state="running", pid=int(pid.split()[0]))
            return out
        # the runner may have written its result between our two reads
        result = read_text(os.path.join(run_dir, "result.json"))
        if result:
            out.update(json.loads(result))
            return out
        out.update(state="lost", message="the job supervisor (pid %s) died without a result" % pid.split()[0])
        job = read_job(run_dir)
        if job.get("container"):  # its container may outlive it: whoever follows the job cancels (removes) it
            from .containers import container_name  # here only: status runs on every poll

            out.update(release=True, message=out["message"] + "; its container %s may still run" % container_name(job))
        return out
    age = time.time() - os.path.getmtime(run_dir)
    if age > LAUNCH_GRACE_S:
        out.update(state="lost", message="the job never started (no runner after %ds)" % int(age))
    else:
        out.update(state="pending")
    return out
