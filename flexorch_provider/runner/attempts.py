"""Submit, idempotent per run key: the attempts under a key directory, reattach or a new one."""

import json
import os

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
    return {"run_dir": latest, "job_id": "%s/%d" % (os.path.basename(os.path.abspath(key_dir)), numbers[-1]),
            "attempt": numbers[-1], "reattached": True}  # fmt: skip


def prepare(key_dir, job, secrets):
    """The live attempt under ``key_dir`` (reattach), or a new attempt directory with its files.

    Returns ``{"run_dir", "job_id", "attempt", "reattached"}``; a new attempt still has to be
    started. Attempt directories are created with mkdir, which is atomic: two racing
    submitters cannot both create the same attempt. A job that asks for GPUs claims them
    here (:func:`.gpus.claim_gpus`); GpuError when this host cannot give them.
    """
    key_dir = os.path.abspath(key_dir)
    os.makedirs(key_dir, 0o700, exist_ok=True)

    slug = os.path.basename(key_dir)
    live = live_attempt(key_dir)
    if live:
        return live
    numbers = attempts(key_dir)
    number = numbers[-1] + 1 if numbers else 1
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
    write_private(os.path.join(run_dir, "job.json"), json.dumps(doc))
    if secrets:
        write_private(os.path.join(run_dir, "secrets.json"), json.dumps(secrets))
    return out
