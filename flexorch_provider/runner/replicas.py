"""Services on this host: the replicas under a service directory, their health, retiring one.

A replica is a job like any other, under ``SVC_DIR/<slot>-<revision>/<attempt>``; its job.json
carries "service" ({"slot", "revision"}) and "health" ({"http", "port"} or {"command"}, "timeout").
"""

import os
import subprocess
import time

from .attempts import attempts
from .files import read_job, read_text
from .procs import cancel, group_alive
from .status import LIVE, status
from .supervisor import RUNTIME_ENV_KEYS, base_environment, workdir_of

DRAINING = "draining"  # in a replica's run directory: it is being scaled down

RETIRED = ".retired"
KEEP_RETIRED = 10


def settled_status(run_dir, wait=3.0):
    """``status``, except that a supervisor whose job process is already gone is given a moment to
    record how it ended: a replica killed a moment ago is dead, not running."""
    st = status(run_dir)
    deadline = time.time() + wait
    while st["state"] == "running" and time.time() < deadline:
        pgid = read_text(os.path.join(run_dir, "job.pgid"))
        if not (pgid and pgid.isdigit()) or group_alive(int(pgid)):
            break
        time.sleep(0.05)
        st = status(run_dir)
    return st


def replicas(svc_dir):
    """Every replica under ``svc_dir``: its latest attempt's state and what it runs."""
    out = []
    try:
        names = sorted(os.listdir(svc_dir))
    except OSError:
        return out
    for name in names:
        key_dir = os.path.join(os.path.abspath(svc_dir), name)
        numbers = attempts(key_dir)
        if name.startswith(".") or not numbers:
            continue
        run_dir = os.path.join(key_dir, str(numbers[-1]))
        meta = read_job(run_dir).get("service") or {}
        st = settled_status(run_dir)
        try:
            started = os.path.getmtime(os.path.join(run_dir, "runner.pid"))
        except OSError:
            started = os.path.getmtime(run_dir)
        out.append(
            {
                "key_dir": key_dir,
                "run_dir": run_dir,
                "slot": meta.get("slot"),
                "revision": meta.get("revision"),
                "state": st["state"],
                "exit_code": st.get("exit_code"),
                "message": st.get("message", ""),
                "started_at": started,
                "age": max(0.0, time.time() - started),
            }
        )
    return out


def check_http(port, path, timeout):
    """GET http://127.0.0.1:PORT/PATH → (healthy, detail); any status below 400 is healthy."""
    import urllib.error
    import urllib.request

    url = "http://127.0.0.1:%d%s" % (int(port), path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            code = response.getcode()
    except urllib.error.HTTPError as e:
        code = e.code
    except Exception as e:  # refused, reset, timeout
        return False, "GET %s: %s" % (url, getattr(e, "reason", None) or e)
    return code < 400, "GET %s: HTTP %d" % (url, code)


def check_command(run_dir, job, command, timeout):
    """The command runs where and with what the replica runs (its workdir and env, no secrets):
    inside the replica's container (``exec``) for a replica with an image."""
    argv = list(command) if isinstance(command, list) else ["/bin/sh", "-c", command]
    env = base_environment(job, run_dir)
    runtime = (job.get("container") or {}).get("runtime_path")
    if runtime:
        from .containers import container_name, quiet

        argv = [runtime, *quiet(runtime), "exec", container_name(job), *argv]
        env.update((k, os.environ[k]) for k in RUNTIME_ENV_KEYS if k in os.environ)
    try:
        done = subprocess.run(
            argv,
            cwd=workdir_of(job, run_dir),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return False, "health command timed out after %ss" % timeout
    except OSError as e:
        return False, "health command could not start: %s" % e
    last = (done.stdout or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return done.returncode == 0, "health command exited %d %s" % (done.returncode, last[0][:200])


def health(run_dir):
    """Is this replica running and healthy? Checks run on the replica's own host."""
    st = status(run_dir)
    out = {"run_dir": os.path.abspath(run_dir), "state": st["state"], "exit_code": st.get("exit_code")}
    if st["state"] != "running":
        out.update(healthy=False, detail="not running: %s %s" % (st["state"], st.get("message", "")))
        return out
    if os.path.exists(os.path.join(run_dir, DRAINING)):
        out.update(healthy=False, draining=True, detail="draining: it is being scaled down")
        return out
    job = read_job(run_dir)
    check = job.get("health") or {}
    timeout = float(check.get("timeout") or 5)
    if check.get("http"):
        ok, detail = check_http(check["port"], check["http"], timeout)
    elif check.get("command"):
        ok, detail = check_command(out["run_dir"], job, check["command"], timeout)
    else:
        ok, detail = True, "running (no health check configured)"
    out.update(healthy=ok, detail=detail)
    return out


def drain(run_dir):
    """Take the replica out of service before it stops: its health reads unready from now on (a
    load balancer following it stops routing; the replica itself may look for the file)."""
    path = os.path.join(os.path.abspath(run_dir), DRAINING)
    with open(path, "w") as f:
        f.write("%d\n" % int(time.time()))
    return {"run_dir": os.path.abspath(run_dir), "draining": True}


def retire(key_dir):
    """Stop the replica (if it runs) and keep its directory, logs included, under .retired/."""
    key_dir = os.path.abspath(key_dir)
    numbers = attempts(key_dir)
    out = {"key_dir": key_dir, "state": "gone"}
    if numbers:
        run_dir = os.path.join(key_dir, str(numbers[-1]))
        st = status(run_dir)
        if st["state"] in LIVE:
            st = cancel(run_dir, float(read_job(run_dir).get("kill_grace", 10)))
        out["state"] = st["state"]
    if os.path.isdir(key_dir):
        import shutil

        graveyard = os.path.join(os.path.dirname(key_dir), RETIRED)
        os.makedirs(graveyard, 0o700, exist_ok=True)
        os.rename(key_dir, os.path.join(graveyard, "%s.%d" % (os.path.basename(key_dir), int(time.time() * 1000))))
        old = sorted(os.listdir(graveyard), key=lambda n: os.path.getmtime(os.path.join(graveyard, n)))
        for name in old[:-KEEP_RETIRED]:
            shutil.rmtree(os.path.join(graveyard, name), ignore_errors=True)
    return out
