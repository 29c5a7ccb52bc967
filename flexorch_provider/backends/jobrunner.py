"""The flexorch job runner: one detached supervisor per job, shared by ``local`` and ``ssh``.

Standard library only and Python 3.6-compatible, because the ssh backend copies this file
to hosts that have a plain ``python3`` and nothing else. Everything about a job lives in
one run directory; no user value ever appears on a command line::

    RUN_DIR/job.json       what to run (argv or script, setup, env, workdir, timeout, GPUs)
    RUN_DIR/secrets.json   secret env values (0600); read and deleted at start
    RUN_DIR/runner.pid     the supervisor's pid (it is a session leader)
    RUN_DIR/job.pgid       process group of the job (setup, then run)
    RUN_DIR/log            job stdout+stderr, secret values replaced by ***
    RUN_DIR/result.json    written last and atomically: state, exit code, times

Modes::

    python3 jobrunner.py submit KEY_DIR     read {"job": ..., "secrets": ...} from stdin; reattach
                                            to the live attempt under KEY_DIR or create and start
                                            the next one (KEY_DIR/<n>); print one JSON line
    python3 jobrunner.py live KEY_DIR       the live attempt under KEY_DIR as JSON, or {}
    python3 jobrunner.py start RUN_DIR      detach and supervise the job (returns at once)
    python3 jobrunner.py status RUN_DIR...  one JSON line per directory
    python3 jobrunner.py log RUN_DIR CURSOR complete log lines after byte CURSOR, as JSON
    python3 jobrunner.py cancel RUN_DIR     stop the job (TERM, then KILL after the grace)

Services (a replica is a job under SVC_DIR/<slot>-<revision>; its job.json carries
"service" and "health")::

    python3 jobrunner.py replicas SVC_DIR   one JSON line per replica: slot, revision, state
    python3 jobrunner.py health RUN_DIR     run the replica's health check here, as JSON
    python3 jobrunner.py retire KEY_DIR     stop a replica and move it to SVC_DIR/.retired/

States: pending (launched, not yet running), running, succeeded, failed, timeout,
cancelled, lost (the supervisor died without a result: kill -9, reboot).
"""

import json
import os
import select
import signal
import subprocess
import sys
import time

LAUNCH_GRACE_S = 30  # a run dir with no runner.pid after this long is lost
TIMEOUT_EXIT = 124
CANCEL_EXIT = 143
MASK = b"***"
MIN_MASK_LEN = 4
BASE_ENV_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SHELL", "TMPDIR")


def _write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _start_time(pid):
    """Kernel start time of ``pid`` (ticks since boot), or None without /proc."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def _runner_identity():
    return "%d %s" % (os.getpid(), _start_time(os.getpid()) or "-")


def _runner_alive(identity):
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
    started = _start_time(pid)
    if len(parts) > 1 and parts[1] != "-" and os.path.exists("/proc/%d" % pid):
        return started == parts[1]
    return True


# --- status ----------------------------------------------------------------------------
def status(run_dir):
    run_dir = os.path.abspath(run_dir)
    out = {"run_dir": run_dir}
    result = _read(os.path.join(run_dir, "result.json"))
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
    pid = _read(os.path.join(run_dir, "runner.pid"))
    if pid:
        if _runner_alive(pid):
            out.update(state="running", pid=int(pid.split()[0]))
            return out
        # the runner may have written its result between our two reads
        result = _read(os.path.join(run_dir, "result.json"))
        if result:
            out.update(json.loads(result))
            return out
        out.update(state="lost", message="the job supervisor (pid %s) died without a result" % pid.split()[0])
        return out
    age = time.time() - os.path.getmtime(run_dir)
    if age > LAUNCH_GRACE_S:
        out.update(state="lost", message="the job never started (no runner after %ds)" % int(age))
    else:
        out.update(state="pending")
    return out


# --- submit (idempotent per run key) ----------------------------------------------------
def _attempts(key_dir):
    try:
        return sorted(int(n) for n in os.listdir(key_dir) if n.isdigit())
    except OSError:
        return []


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def live_attempt(key_dir):
    """The latest attempt under ``key_dir`` if it is still pending or running, else None."""
    attempts = _attempts(key_dir)
    if not attempts:
        return None
    latest = os.path.join(os.path.abspath(key_dir), str(attempts[-1]))
    if status(latest)["state"] not in ("pending", "running"):
        return None
    return {"run_dir": latest, "job_id": "%s/%d" % (os.path.basename(os.path.abspath(key_dir)), attempts[-1]),
            "attempt": attempts[-1], "reattached": True}  # fmt: skip


# --- GPUs on this host ------------------------------------------------------------------
# A job that asks for GPUs gets CUDA_VISIBLE_DEVICES set to GPUs of its own: free ones (no
# compute process, not claimed by another live flexorch run of this account) of the asked
# model, or the indices a placement names. Claims live in ~/.flexorch/gpu-claims.json, taken
# under a lock, and lapse when their run ends. nvidia-smi numbers GPUs in PCI bus order, so
# CUDA_DEVICE_ORDER=PCI_BUS_ID is set too (CUDA's own default order is fastest first).
GPU_CLAIMS = os.path.join("~", ".flexorch", "gpu-claims.json")
GPU_QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu",
             "--format=csv,noheader,nounits"]  # fmt: skip
APPS_QUERY = ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits"]
GPU_REFUSED_EXIT = 4
GPU_QUERY_TIMEOUT_S = 10
GPU_LOCK_WAIT_S = 10  # both well inside LAUNCH_GRACE_S: a slow claim never looks like a lost launch
MEMORY_SLACK = 0.95  # boards report less than their nominal size (an "80Gi" H100 shows 81559 MiB)


class GpuError(Exception):
    """The GPUs a job asks for are not free on this host; the message says what is there."""


def gpu_model(name):
    """nvidia-smi's name → the spec's model name: 'NVIDIA A100-SXM4-80GB' → 'A100', 'NVIDIA L40S' →
    'L40S', 'Tesla T4' → 'T4' (the inventory's model_name, without its dependencies)."""
    import re

    text = re.sub(r"^(NVIDIA|Tesla|Quadro)\s+", "", name.strip(), flags=re.I)
    text = re.sub(r"^GeForce\s+", "", text, flags=re.I)
    head = re.split(r"[-\s](?=(?:SXM|PCIE|NVL|\d+GB|MIG))", text, flags=re.I)[0]
    return "".join(c for c in head if c.isalnum()).upper()


def _nvidia_smi(argv):
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=GPU_QUERY_TIMEOUT_S)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GpuError("no NVIDIA GPU here: nvidia-smi cannot be run (%s)" % e) from None
    if done.returncode != 0:
        raise GpuError("nvidia-smi %s exited %d: %s" % (argv[1].split("=")[0], done.returncode,
                                                       (done.stderr or done.stdout).strip()[:200]))  # fmt: skip
    return done.stdout


def gpus_here():
    """[(index, name, uuid, memory MiB)] and the uuids with compute processes (GpuError when unknown)."""
    gpus = []
    for line in _nvidia_smi(GPU_QUERY).splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 4 and fields[0].isdigit():
            total = int(float(fields[3])) if fields[3].replace(".", "", 1).isdigit() else None
            gpus.append((int(fields[0]), fields[2], fields[1], total))
    busy = set()
    for line in _nvidia_smi(APPS_QUERY).splitlines():  # unknown ≠ idle: a failed query refuses
        uuid = line.split(",")[0].strip()
        if uuid.startswith("GPU-"):
            busy.add(uuid)
    return gpus, busy


def claim_gpus(run_dir, want, table=None):
    """Claim GPUs for ``run_dir``; ``want`` is {"count", "type", "memory_mib"} or {"indices"};
    ``table`` is :func:`gpus_here` (asked here when not given). Returns the indices."""
    import fcntl

    if want.get("indices") is None and table is None:
        table = gpus_here()
    path = os.path.expanduser(GPU_CLAIMS)
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        deadline = time.time() + GPU_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.time() > deadline:
                    raise GpuError(
                        "the GPU claims lock %s.lock stayed busy for %ds" % (path, GPU_LOCK_WAIT_S)
                    ) from None
                time.sleep(0.05)
        try:
            with open(path) as f:
                claims = json.load(f)
        except (OSError, ValueError):
            claims = {}
        claims = {i: d for i, d in claims.items() if d != run_dir and status(d)["state"] in ("pending", "running")}
        if want.get("indices") is not None:
            chosen = [int(i) for i in want["indices"]]
            held = ["GPU %d by %s" % (i, claims[str(i)]) for i in chosen if str(i) in claims]
            if held:
                raise GpuError("the placement's GPUs are held by other flexorch runs: " + "; ".join(held))
        else:
            gpus, busy = table
            count, model, memory = int(want.get("count") or 1), want.get("type"), want.get("memory_mib")
            fits = [g for g in gpus if (not model or gpu_model(g[1]) == model)
                    and (not memory or (g[3] or 0) >= memory * MEMORY_SLACK)]  # fmt: skip
            free = [g for g in fits if g[2] not in busy and str(g[0]) not in claims]
            if len(free) < count:
                have = ", ".join("%d: %s %s MiB%s" % (g[0], g[1], g[3], " (claimed by a flexorch run)" if str(g[0]) in claims
                                               else " (busy: compute processes)" if g[2] in busy else "")
                                 for g in gpus) or "none"  # fmt: skip
                with_memory = " with %d MiB or more" % memory if memory else ""
                raise GpuError("%d %sGPU(s)%s wanted, %d free; this host's GPUs: %s" % (
                    count, (model + " ") if model else "", with_memory, len(free), have))  # fmt: skip
            chosen = [g[0] for g in free[:count]]
        for i in chosen:
            claims[str(i)] = run_dir
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "w") as f:
            json.dump(claims, f)
        os.replace(tmp, path)
    return chosen


def prepare(key_dir, job, secrets):
    """The live attempt under ``key_dir`` (reattach), or a new attempt directory with its files.

    Returns ``{"run_dir", "job_id", "attempt", "reattached"}``; a new attempt still has to be
    started. Attempt directories are created with mkdir, which is atomic: two racing
    submitters cannot both create the same attempt.
    """
    key_dir = os.path.abspath(key_dir)
    os.makedirs(key_dir, 0o700, exist_ok=True)

    slug = os.path.basename(key_dir)
    live = live_attempt(key_dir)
    if live:
        return live
    attempts = _attempts(key_dir)
    number = attempts[-1] + 1 if attempts else 1
    run_dir = os.path.join(key_dir, str(number))
    out = {"run_dir": run_dir, "job_id": "%s/%d" % (slug, number), "attempt": number, "reattached": False}
    want = job.get("gpus")
    table = gpus_here() if want and want.get("indices") is None else None  # before anything exists
    try:
        os.mkdir(run_dir, 0o700)
    except FileExistsError:
        out["reattached"] = True
        return out
    doc = dict(job)
    doc["job_id"] = out["job_id"]
    if want:
        try:
            chosen = claim_gpus(run_dir, want, table)
        except Exception:
            os.rmdir(run_dir)  # nothing was started: the next submit may try again
            raise
        doc["env"] = dict(doc.get("env") or {}, CUDA_VISIBLE_DEVICES=",".join(str(i) for i in chosen),
                          CUDA_DEVICE_ORDER="PCI_BUS_ID")  # fmt: skip
        doc["gpu_indices"] = chosen
    _write_private(os.path.join(run_dir, "job.json"), json.dumps(doc))
    if secrets:
        _write_private(os.path.join(run_dir, "secrets.json"), json.dumps(secrets))
    return out


# --- logs ------------------------------------------------------------------------------
MAX_LOG_READ = 1 << 20


def read_log(run_dir, cursor, limit=MAX_LOG_READ):
    """Complete lines after byte ``cursor`` and the new cursor (past the last newline read)."""
    try:
        with open(os.path.join(run_dir, "log"), "rb") as f:
            f.seek(cursor)
            data = f.read(limit)
    except (OSError, ValueError):
        return [], cursor
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) < limit:
            return [], cursor
        end = len(data) - 1  # one huge line: hand it over in pieces
    text = data[: end + 1].decode("utf-8", "replace")
    return text.splitlines(), cursor + end + 1


# --- cancel ----------------------------------------------------------------------------
def _kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _group_alive(pgid):
    """True while any non-zombie process is in group ``pgid`` (zombies are already dead)."""
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _become_subreaper():
    """Orphans of the job (its background processes) are re-parented to us, so we can reap them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def cancel(run_dir, grace=10.0):
    """Ask the runner to stop the job; make sure the job's process group is gone."""
    run_dir = os.path.abspath(run_dir)
    pid = _read(os.path.join(run_dir, "runner.pid"))
    pgid = _read(os.path.join(run_dir, "job.pgid"))
    if _runner_alive(pid):
        try:
            os.kill(int(pid.split()[0]), signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace + 5
    while time.time() < deadline:
        if os.path.exists(os.path.join(run_dir, "result.json")) and not (
            pgid and pgid.isdigit() and _group_alive(int(pgid))
        ):
            break
        time.sleep(0.1)
    if pgid and pgid.isdigit() and _group_alive(int(pgid)):
        _kill_group(int(pgid), signal.SIGKILL)
    if not os.path.exists(os.path.join(run_dir, "result.json")):
        _write_atomic(
            os.path.join(run_dir, "result.json"),
            json.dumps({"state": "cancelled", "exit_code": CANCEL_EXIT, "finished_at": time.time(),
                        "message": "cancelled"}),
        )  # fmt: skip
    return status(run_dir)


# --- services --------------------------------------------------------------------------
RETIRED = ".retired"
KEEP_RETIRED = 10


def _job_of(run_dir):
    try:
        with open(os.path.join(run_dir, "job.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _settled_status(run_dir, wait=3.0):
    """``status``, except that a supervisor whose job process is already gone is given a moment to
    record how it ended: a replica killed a moment ago is dead, not running."""
    st = status(run_dir)
    deadline = time.time() + wait
    while st["state"] == "running" and time.time() < deadline:
        pgid = _read(os.path.join(run_dir, "job.pgid"))
        if not (pgid and pgid.isdigit()) or _group_alive(int(pgid)):
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
        attempts = _attempts(key_dir)
        if name.startswith(".") or not attempts:
            continue
        run_dir = os.path.join(key_dir, str(attempts[-1]))
        meta = _job_of(run_dir).get("service") or {}
        st = _settled_status(run_dir)
        try:
            started = os.path.getmtime(os.path.join(run_dir, "runner.pid"))
        except OSError:
            started = os.path.getmtime(run_dir)
        out.append({"key_dir": key_dir, "run_dir": run_dir, "slot": meta.get("slot"), "revision": meta.get("revision"),
                    "state": st["state"], "exit_code": st.get("exit_code"), "message": st.get("message", ""),
                    "started_at": started, "age": max(0.0, time.time() - started)})  # fmt: skip
    return out


def _check_http(port, path, timeout):
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


def _check_command(run_dir, job, command, timeout):
    """The command runs where and with what the replica runs (its workdir and env, no secrets)."""
    env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
    env.update(job.get("env") or {})
    env["FLEXORCH_RUN_DIR"] = run_dir
    workdir = os.path.join(os.path.expanduser("~"), os.path.expanduser(job.get("workdir") or run_dir))
    argv = list(command) if isinstance(command, list) else ["/bin/sh", "-c", command]
    try:
        done = subprocess.run(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, start_new_session=True)  # fmt: skip
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
    job = _job_of(run_dir)
    check = job.get("health") or {}
    timeout = float(check.get("timeout") or 5)
    if check.get("http"):
        ok, detail = _check_http(check["port"], check["http"], timeout)
    elif check.get("command"):
        ok, detail = _check_command(out["run_dir"], job, check["command"], timeout)
    else:
        ok, detail = True, "running (no health check configured)"
    out.update(healthy=ok, detail=detail)
    return out


def retire(key_dir):
    """Stop the replica (if it runs) and keep its directory, logs included, under .retired/."""
    key_dir = os.path.abspath(key_dir)
    attempts = _attempts(key_dir)
    out = {"key_dir": key_dir, "state": "gone"}
    if attempts:
        run_dir = os.path.join(key_dir, str(attempts[-1]))
        st = status(run_dir)
        if st["state"] in ("pending", "running"):
            st = cancel(run_dir, float(_job_of(run_dir).get("kill_grace", 10)))
        out["state"] = st["state"]
    if os.path.isdir(key_dir):
        graveyard = os.path.join(os.path.dirname(key_dir), RETIRED)
        os.makedirs(graveyard, 0o700, exist_ok=True)
        os.rename(key_dir, os.path.join(graveyard, "%s.%d" % (os.path.basename(key_dir), int(time.time() * 1000))))
        old = sorted(os.listdir(graveyard), key=lambda n: os.path.getmtime(os.path.join(graveyard, n)))
        for name in old[:-KEEP_RETIRED]:
            import shutil

            shutil.rmtree(os.path.join(graveyard, name), ignore_errors=True)
    return out


def _reaped_within(pgid, seconds):
    """Reap orphaned children until group ``pgid`` is gone; False if it outlives ``seconds``."""
    deadline = time.time() + seconds
    while True:
        _reap()
        if not _group_alive(pgid):
            return True
        if time.time() >= deadline:
            return False
        time.sleep(0.05)


# --- the supervisor --------------------------------------------------------------------
class _Supervisor:
    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.stop_reason = None  # "cancelled" | "timeout"
        with open(os.path.join(run_dir, "job.json")) as f:
            self.job = json.load(f)
        secrets_path = os.path.join(run_dir, "secrets.json")
        self.secrets = {}
        if os.path.exists(secrets_path):
            with open(secrets_path) as f:
                self.secrets = json.load(f)
            os.unlink(secrets_path)
        self.masks = sorted(
            {v.encode("utf-8") for v in self.secrets.values() if len(v) >= MIN_MASK_LEN}, key=len, reverse=True
        )
        self.log = open(os.path.join(run_dir, "log"), "ab", buffering=0)
        self.child = None

    def note(self, text):
        self.log.write(("[flexorch] %s\n" % text).encode("utf-8"))

    def environment(self):
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env.update(self.job.get("env") or {})
        env.update(self.secrets)
        env["FLEXORCH_RUN_DIR"] = self.run_dir
        env["FLEXORCH_JOB_ID"] = self.job.get("job_id", "")
        env["FLEXORCH_RUN_KEY"] = self.job.get("run_key", "")
        return env

    def _on_term(self, signum, frame):
        if self.stop_reason is None:
            self.stop_reason = "cancelled"

    def run_step(self, argv, deadline):
        """Run one process in its own group; stream its output through the masker."""
        workdir = self.job.get("workdir") or self.run_dir
        workdir = os.path.join(os.path.expanduser("~"), os.path.expanduser(workdir))  # relative → home
        try:
            self.child = subprocess.Popen(
                argv, cwd=workdir, env=self.environment(), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=os.setpgrp,
            )  # fmt: skip
        except OSError as e:
            self.note("could not start %s: %s" % (argv[0], e))
            return 127
        _write_atomic(os.path.join(self.run_dir, "job.pgid"), str(self.child.pid))
        fd = self.child.stdout.fileno()
        pending = b""
        self._stop_sent_at = None
        eof = False
        while True:
            self._enforce_stop(deadline)
            if eof:
                if self.child.poll() is not None:
                    break
                time.sleep(0.1)
                continue
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    eof = True
                    continue
                pending += chunk
                if b"\n" in pending:
                    lines, pending = pending.rsplit(b"\n", 1)
                    self.log.write(self.mask(lines + b"\n"))
                elif len(pending) > 65536:
                    self.log.write(self.mask(pending))
                    pending = b""
            elif self.child.poll() is not None:
                break  # done; a background process may still hold the pipe: it is stopped below
        if pending:
            self.log.write(self.mask(pending) + b"\n")
        # background processes the step left behind die with it
        if not _reaped_within(self.child.pid, 0):
            _kill_group(self.child.pid, signal.SIGTERM)
            if not _reaped_within(self.child.pid, 1.0):
                _kill_group(self.child.pid, signal.SIGKILL)
                _reaped_within(self.child.pid, 1.0)
        code = self.child.returncode
        return 128 - code if code < 0 else code

    def _enforce_stop(self, deadline):
        if self.stop_reason is None and deadline is not None and time.time() > deadline:
            self.stop_reason = "timeout"
        if self.stop_reason and self._stop_sent_at is None:
            self.note("%s: stopping the job (SIGTERM to its process group)" % self.stop_reason)
            _kill_group(self.child.pid, signal.SIGTERM)
            self._stop_sent_at = time.time()
        grace = float(self.job.get("kill_grace", 10))
        if self._stop_sent_at is not None and time.time() - self._stop_sent_at > grace:
            self.note("still running %ds after SIGTERM: SIGKILL" % int(grace))
            _kill_group(self.child.pid, signal.SIGKILL)
            self._stop_sent_at = float("inf")

    def mask(self, data):
        for secret in self.masks:
            data = data.replace(secret, MASK)
        return data

    def shell(self):
        for candidate in ("/bin/bash", "/usr/bin/bash", "/bin/sh"):
            if os.path.exists(candidate):
                return candidate
        return "sh"

    def main(self):
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _become_subreaper()
        _write_atomic(os.path.join(self.run_dir, "runner.pid"), _runner_identity())
        started = time.time()
        timeout = self.job.get("timeout")
        deadline = started + float(timeout) if timeout else None
        code = 0
        setup = self.job.get("setup")
        if setup:
            path = os.path.join(self.run_dir, "setup.sh")
            with open(path, "w") as f:
                f.write(setup)
            self.note("setup")
            code = self.run_step([self.shell(), "-e", path], deadline)
            if code != 0 and not self.stop_reason:
                self.note("setup failed with exit code %d; run is skipped" % code)
        if code == 0 and not self.stop_reason:
            if self.job.get("argv"):
                argv = list(self.job["argv"])
            else:
                path = os.path.join(self.run_dir, "run.sh")
                with open(path, "w") as f:
                    f.write(self.job.get("script") or "")
                argv = [self.shell(), path]
            code = self.run_step(argv, deadline)
        if self.stop_reason == "timeout":
            state, code = "timeout", TIMEOUT_EXIT
            message = "timed out after %ds" % int(float(timeout))
        elif self.stop_reason == "cancelled":
            state, code = "cancelled", CANCEL_EXIT
            message = "cancelled"
        else:
            state = "succeeded" if code == 0 else "failed"
            message = "exit code %d" % code
        self.note("%s (%s)" % (state, message))
        self.log.close()
        _write_atomic(
            os.path.join(self.run_dir, "result.json"),
            json.dumps({"state": state, "exit_code": code, "started_at": started, "finished_at": time.time(),
                        "message": message}),
        )  # fmt: skip


def start(run_dir):
    """Detach (double fork + setsid) so the job outlives whoever started it, then supervise."""
    run_dir = os.path.abspath(run_dir)
    if os.fork() > 0:
        return
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        _Supervisor(run_dir).main()
    except BaseException as e:  # record why, then exit; nobody is watching stderr
        try:
            with open(os.path.join(run_dir, "log"), "ab") as f:
                f.write(("[flexorch] supervisor error: %r\n" % (e,)).encode())
            _write_atomic(
                os.path.join(run_dir, "result.json"),
                json.dumps({"state": "failed", "exit_code": 1, "finished_at": time.time(),
                            "message": "supervisor error: %r" % (e,)}),
            )  # fmt: skip
        finally:
            os._exit(1)
    os._exit(0)


def _wait_for_runner(run_dir, seconds=5.0):
    """Return once the supervisor has started (so the caller's first status says running)."""
    deadline = time.time() + seconds
    pid_file = os.path.join(run_dir, "runner.pid")
    while time.time() < deadline and not os.path.exists(pid_file):
        time.sleep(0.005)


def main(argv):
    if len(argv) == 2 and argv[0] == "submit":
        payload = json.loads(sys.stdin.read())
        try:
            out = prepare(argv[1], payload["job"], payload.get("secrets") or {})
        except GpuError as e:
            sys.stderr.write("GPUs: %s\n" % e)
            return GPU_REFUSED_EXIT
        if not out["reattached"]:
            start(out["run_dir"])
            _wait_for_runner(out["run_dir"])
        sys.stdout.write(json.dumps(out) + "\n")
    elif len(argv) == 2 and argv[0] == "live":
        sys.stdout.write(json.dumps(live_attempt(argv[1]) or {}) + "\n")
    elif len(argv) == 3 and argv[0] == "log":
        lines, cursor = read_log(argv[1], int(argv[2]))
        sys.stdout.write(json.dumps({"lines": lines, "cursor": cursor}) + "\n")
    elif len(argv) >= 2 and argv[0] == "start":
        start(argv[1])
    elif len(argv) >= 2 and argv[0] == "status":
        for run_dir in argv[1:]:
            sys.stdout.write(json.dumps(status(run_dir)) + "\n")
    elif len(argv) >= 2 and argv[0] == "cancel":
        sys.stdout.write(json.dumps(cancel(argv[1])) + "\n")
    elif len(argv) == 2 and argv[0] == "replicas":
        for replica in replicas(argv[1]):
            sys.stdout.write(json.dumps(replica) + "\n")
    elif len(argv) >= 2 and argv[0] == "health":
        for run_dir in argv[1:]:
            sys.stdout.write(json.dumps(health(run_dir)) + "\n")
    elif len(argv) >= 2 and argv[0] == "retire":
        for key_dir in argv[1:]:
            sys.stdout.write(json.dumps(retire(key_dir)) + "\n")
    else:
        sys.stderr.write(
            "usage: jobrunner.py submit|live KEY_DIR | start|status|cancel|health RUN_DIR... | log RUN_DIR CURSOR"
            " | replicas SVC_DIR | retire KEY_DIR...\n"
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
