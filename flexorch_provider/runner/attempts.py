"""Submit, idempotent per run key: the attempts under a key directory, reattach or a new one."""

import json
import os
import shutil

from . import gang
from .code import CodeError, checkout
from .containers import NoRuntime, find_runtime, forget_registry_login, write_registry_login
from .files import write_private
from .gpus import claim_gpus, gpus_here
from .status import LIVE, status


def attempts(key_dir):
    """The attempt numbers under ``key_dir`` (its numbered subdirectories), in order."""
    try:
        return sorted(int(n) for n in os.listdir(key_dir) if n.isdigit())
    except OSError:
        return []


def live_attempt(key_dir):
    """The latest attempt under ``key_dir`` if it is still pending or running, else None."""
    numbers = attempts(key_dir)
    if not numbers:
        return None
    latest = os.path.join(os.path.abspath(key_dir), str(numbers[-1]))
    if status(latest)["state"] not in LIVE:
        return None
    out = {
        "run_dir": latest,
        "job_id": "%s/%d" % (os.path.basename(os.path.abspath(key_dir)), numbers[-1]),
        "attempt": numbers[-1],
        "reattached": True,
    }
    node = gang.facts(latest)
    if node:  # a node of a multi-node group: its address, port, and whether it still waits for go
        out["gang"] = node
    return out


CLAIMED = "claimed"  # in a run dir: the job's outcome reached Airflow (the operator recorded it)


def claim(run_dir):
    """Mark the attempt's outcome as recorded by Airflow: a later try of the run key runs anew."""
    path = os.path.join(os.path.abspath(run_dir), CLAIMED)
    forget_registry_login(os.path.dirname(path))  # were it still there (a supervisor that never ran)
    if os.path.isdir(os.path.dirname(path)):
        with open(path, "a"):
            pass
        return {"run_dir": os.path.dirname(path), "claimed": True}
    return {"run_dir": os.path.dirname(path), "claimed": False}


def unclaimed_end(key_dir):
    """The latest attempt under ``key_dir`` if it has ended and no try recorded its outcome
    (its worker died first), with its state; else None."""
    numbers = attempts(key_dir)
    if not numbers:
        return None
    latest = os.path.join(os.path.abspath(key_dir), str(numbers[-1]))
    st = status(latest)
    if st["state"] in LIVE or os.path.exists(os.path.join(latest, CLAIMED)):
        return None
    return {
        "run_dir": latest,
        "job_id": "%s/%d" % (os.path.basename(os.path.abspath(key_dir)), numbers[-1]),
        "attempt": numbers[-1],
        "state": st["state"],
        "exit_code": st.get("exit_code"),
        "message": st.get("message", ""),
    }


def found(key_dir, adopt=True):
    """What a submit of this run key finds: the live attempt (reattach), or one that succeeded
    without its outcome reaching Airflow (adopt: never run a finished job twice); else {}.
    A service replica is never adopted: one that ended is started again."""
    live = live_attempt(key_dir)
    if live or not adopt:
        return live or {}
    ended = unclaimed_end(key_dir)
    if ended and ended["state"] == "succeeded":
        return dict(ended, reattached=True, adopted=True)
    return {}


def prepare(key_dir, job, secrets, registry=None):
    """The live attempt under ``key_dir`` (reattach), an unclaimed success (adopt), or a new
    attempt directory with its files.

    Returns ``{"run_dir", "job_id", "attempt", "reattached"}`` (``adopted`` for a success taken
    over; ``previous`` for an unclaimed attempt that did not succeed, which runs again); a new
    attempt still has to be started. Attempt directories are created with mkdir, which is atomic: two racing
    submitters cannot both create the same attempt. ``registry`` is a private image's login
    ({registry, login, password}), kept in the run directory only until the container exists.
    A node of a multi-node group (``gang`` in the job) is held until ``go`` (:mod:`.gang`).
    A job that asks for GPUs claims them
    here (:func:`.gpus.claim_gpus`); GpuError when this host cannot give them.
    """
    key_dir = os.path.abspath(key_dir)
    os.makedirs(key_dir, 0o700, exist_ok=True)

    slug = os.path.basename(key_dir)
    service = bool(job.get("service"))
    # a node of a group is never adopted alone: the ssh target looks at every node first (``live``)
    existing = found(key_dir, adopt=not service and not job.get("gang"))
    if existing:
        return existing
    previous = None if service else unclaimed_end(key_dir)
    numbers = attempts(key_dir)
    number = numbers[-1] + 1 if numbers else 1
    run_dir = os.path.join(key_dir, str(number))
    out = {"run_dir": run_dir, "job_id": "%s/%d" % (slug, number), "attempt": number, "reattached": False}
    if previous:
        out["previous"] = previous
    want = job.get("gpus")
    table = gpus_here() if want and want.get("indices") is None else None  # before anything exists
    try:
        os.mkdir(run_dir, 0o700)
    except FileExistsError:
        out["reattached"] = True
        return out
    doc = dict(job)
    doc["job_id"] = out["job_id"]
    if doc.get("container"):
        try:  # a host without the runtime refuses before anything exists (placement any tries the next)
            doc["container"] = dict(doc["container"], runtime_path=find_runtime(doc["container"].get("runtime")))
        except NoRuntime:
            os.rmdir(run_dir)
            raise
    if doc.get("code"):  # the job starts in its own tree of the code bundle this host keeps (:mod:`.code`)
        try:
            code_dir = checkout(doc["code"]["digest"], run_dir)
        except Exception:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        doc["code"] = dict(doc["code"], dir=code_dir)
        doc["env"] = dict(doc.get("env") or {}, FLEXORCH_CODE_DIR=code_dir, FLEXORCH_CODE_DIGEST=doc["code"]["digest"])
    if doc.get("checkpoint_dir"):  # outlives this attempt: the same folder for every attempt of the run key
        folder = os.path.join(os.path.expanduser("~"), os.path.expanduser(doc["checkpoint_dir"]))
        try:
            os.makedirs(folder, 0o700, exist_ok=True)
        except OSError as e:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise CodeError("cannot make checkpoint_dir %s here: %s" % (folder, e.strerror or e)) from None
        doc["env"] = dict(doc.get("env") or {}, FLEXORCH_CHECKPOINT_DIR=folder)
    if want:
        try:
            chosen = claim_gpus(run_dir, want, table)
        except Exception:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was started: the next submit may try again
            raise
        doc["env"] = dict(
            doc.get("env") or {}, CUDA_VISIBLE_DEVICES=",".join(str(i) for i in chosen), CUDA_DEVICE_ORDER="PCI_BUS_ID"
        )
        doc["gpu_indices"] = chosen
    else:  # a job that asked for no GPUs sees none (CUDA, and the NVIDIA container runtime)
        doc["env"] = dict(doc.get("env") or {}, CUDA_VISIBLE_DEVICES="", NVIDIA_VISIBLE_DEVICES="void")
    write_private(os.path.join(run_dir, "job.json"), json.dumps(doc))
    if secrets:
        write_private(os.path.join(run_dir, "secrets.json"), json.dumps(secrets))
    if registry and doc.get("container"):  # a private image's login: deleted once the container exists
        write_registry_login(run_dir, registry)
    if job.get("gang"):  # started held, until every node of the group is ready (:mod:`.gang`)
        out["gang"] = gang.reserve(run_dir)
    return out


def attempt_notes(out, where=""):
    """What the task log should say about a submit's result (``out`` from :func:`prepare` or
    :func:`found`): an adopted success, or an unrecorded failure that runs again."""
    at = " on %s" % where if where else ""
    if out.get("adopted"):
        return [
            "job %s%s had already succeeded, but no earlier try recorded it (its worker died): taking its "
            "result and log instead of running it again" % (out["job_id"], at)
        ]
    prev = out.get("previous")
    if prev:
        return [
            "the previous try's job %s%s ended %s (%s) without its outcome reaching Airflow: running it "
            "again as %s" % (prev["job_id"], at, prev["state"], prev.get("message") or "no message", out["job_id"])
        ]
    return []
