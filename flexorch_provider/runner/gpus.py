"""GPUs on this host: nvidia-smi's tables, model names, and claims of GPUs for runs.

A job that asks for GPUs gets CUDA_VISIBLE_DEVICES set to GPUs of its own: free ones (no
compute process, not claimed by another live flexorch run of this account) of the asked
model, or the indices a placement names. Claims live in ~/.flexorch/gpu-claims.json, taken
under a lock, and lapse when their run ends. nvidia-smi numbers GPUs in PCI bus order, so
CUDA_DEVICE_ORDER=PCI_BUS_ID is set too (CUDA's own default order is fastest first).

The inventory (``flexorch_provider.inventory.sources``) parses the same queries and names
models with :func:`gpu_model`, so inventory and claims never disagree.
"""

import json
import os
import re
import time

from .status import LIVE, status

GPU_CLAIMS = os.path.join("~", ".flexorch", "gpu-claims.json")
GPU_FIELDS = "index,uuid,name,memory.total,memory.used,utilization.gpu"
APPS_FIELDS = "gpu_uuid,pid,used_memory"
CSV_FORMAT = "--format=csv,noheader,nounits"
GPU_QUERY = ["nvidia-smi", "--query-gpu=" + GPU_FIELDS, CSV_FORMAT]
APPS_QUERY = ["nvidia-smi", "--query-compute-apps=" + APPS_FIELDS, CSV_FORMAT]
GPU_REFUSED_EXIT = 4
GPU_REFUSAL_PREFIX = "GPUs: "  # a submit refused for GPUs says so on stderr (else it was the image's runtime)
GPU_QUERY_TIMEOUT_S = 10
GPU_LOCK_WAIT_S = 10  # both well inside LAUNCH_GRACE_S: a slow claim never looks like a lost launch
MEMORY_SLACK = 0.95  # boards report less than their nominal size (an "80Gi" H100 shows 81559 MiB)


class GpuError(Exception):
    """The GPUs a job asks for are not free on this host; the message says what is there."""


def gpu_model(name):
    """nvidia-smi's name → the spec's model name: 'NVIDIA A100-SXM4-80GB' → 'A100', 'NVIDIA L40S' →
    'L40S', 'Tesla T4' → 'T4' (the inventory's model_name builds on this)."""
    text = re.sub(r"^(NVIDIA|Tesla|Quadro)\s+", "", name.strip(), flags=re.I)
    text = re.sub(r"^GeForce\s+", "", text, flags=re.I)
    head = re.split(r"[-\s](?=(?:SXM|PCIE|NVL|\d+GB|MIG))", text, flags=re.I)[0]
    return "".join(c for c in head if c.isalnum()).upper()


def csv_number(text):
    """A number of nvidia-smi's CSV as an int ('81920', '12.5'); None for '[N/A]' and the like."""
    text = text.strip()
    return int(float(text)) if re.fullmatch(r"\d+(\.\d+)?", text) else None


def parse_gpus(text):
    """Rows of :data:`GPU_QUERY` → [{"index", "uuid", "name", "memory_total", "memory_used",
    "utilization"}] (MiB, percent; the keys of ``flexorch_provider.inventory.nvml.read``); other lines are
    skipped."""
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6 or not fields[0].isdigit():
            continue
        rows.append(
            {
                "index": int(fields[0]),
                "uuid": fields[1],
                "name": fields[2],
                "memory_total": csv_number(fields[3]),
                "memory_used": csv_number(fields[4]),
                "utilization": csv_number(fields[5]),
            }
        )
    return rows


def parse_apps(text):
    """Rows of :data:`APPS_QUERY` → {GPU uuid: number of compute processes on it}."""
    apps = {}
    for line in text.splitlines():
        uuid = line.split(",")[0].strip()
        if uuid.startswith("GPU-"):
            apps[uuid] = apps.get(uuid, 0) + 1
    return apps


def nvidia_smi(argv):
    """nvidia-smi's stdout; GpuError when it cannot be run or fails."""
    import subprocess

    try:
        done = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=GPU_QUERY_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GpuError("no NVIDIA GPU here: nvidia-smi cannot be run (%s)" % e) from None
    if done.returncode != 0:
        raise GpuError(
            "nvidia-smi %s exited %d: %s"
            % (argv[1].split("=")[0], done.returncode, (done.stderr or done.stdout).strip()[:200])
        )
    return done.stdout


def gpus_here():
    """(:func:`parse_gpus` rows, the uuids with compute processes) of this host; GpuError when unknown."""
    rows = parse_gpus(nvidia_smi(GPU_QUERY))
    busy = set(parse_apps(nvidia_smi(APPS_QUERY)))  # unknown ≠ idle: a failed query refuses
    return rows, busy


def _locked(lock, path):
    """Take the claims lock (``lock`` is its open file); GpuError if it stays busy."""
    import fcntl

    deadline = time.time() + GPU_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.time() > deadline:
                raise GpuError("the GPU claims lock %s.lock stayed busy for %ds" % (path, GPU_LOCK_WAIT_S)) from None
            time.sleep(0.05)


def _choose(want, table, claims):
    """The GPU indices for ``want`` given the table and the live claims; GpuError if they do not fit."""
    if want.get("indices") is not None:
        chosen = [int(i) for i in want["indices"]]
        held = ["GPU %d by %s" % (i, claims[str(i)]) for i in chosen if str(i) in claims]
        if held:
            raise GpuError("the placement's GPUs are held by other flexorch runs: " + "; ".join(held))
        return chosen
    gpus, busy = table
    count, model, memory = int(want.get("count") or 1), want.get("type"), want.get("memory_mib")
    fits = [
        g
        for g in gpus
        if (not model or gpu_model(g["name"]) == model)
        and (not memory or (g["memory_total"] or 0) >= memory * MEMORY_SLACK)
    ]
    free = [g for g in fits if g["uuid"] not in busy and str(g["index"]) not in claims]
    if len(free) < count:
        have = (
            ", ".join(
                "%d: %s %s MiB%s"
                % (
                    g["index"],
                    g["name"],
                    g["memory_total"],
                    " (claimed by a flexorch run)"
                    if str(g["index"]) in claims
                    else " (busy: compute processes)"
                    if g["uuid"] in busy
                    else "",
                )
                for g in gpus
            )
            or "none"
        )
        with_memory = " with %d MiB or more" % memory if memory else ""
        raise GpuError(
            "%d %sGPU(s)%s wanted, %d free; this host's GPUs: %s"
            % (count, (model + " ") if model else "", with_memory, len(free), have)
        )
    return [g["index"] for g in free[:count]]


def claim_gpus(run_dir, want, table=None):
    """Claim GPUs for ``run_dir``; ``want`` is {"count", "type", "memory_mib"} or {"indices"};
    ``table`` is :func:`gpus_here` (asked here when not given). Returns the indices."""
    if want.get("indices") is None and table is None:
        table = gpus_here()
    path = os.path.expanduser(GPU_CLAIMS)
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        _locked(lock, path)
        try:
            with open(path) as f:
                claims = json.load(f)
        except (OSError, ValueError):
            claims = {}
        claims = {i: d for i, d in claims.items() if d != run_dir and status(d)["state"] in LIVE}
        chosen = _choose(want, table, claims)
        for i in chosen:
            claims[str(i)] = run_dir
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "w") as f:
            json.dump(claims, f)
        os.replace(tmp, path)
    return chosen
