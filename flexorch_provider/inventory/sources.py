"""The four inventory sources. Each turns its native view into :class:`Node` lists."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

# loaded before any probe's thread: the probes import our backends and Airflow's hooks lazily, both of
# which import pathspec, whose modules import each other; two threads importing it at once can find it
# half made ("cannot import name ... from partially initialized module", seen in `flexorch gpus`)
import pathspec  # noqa: F401

from flexorch_provider.inventory.model import Gpu, Node, PoolInventory
from flexorch_provider.runner.gpus import APPS_QUERY, GPU_QUERY, gpu_model, parse_apps, parse_gpus
from flexorch_provider.spec.units import normalize_gpu_type

# --- ssh hosts: NVML through our package where it is installed, else nvidia-smi -------------
SEPARATOR = "--- flexorch compute apps ---"
# one command per host, no user values in it ("$1" is the pool's python, an argv element):
# NVML through flexorch_provider.inventory.nvml when that imports, else both nvidia-smi queries (the
# job runner's, parsed by its code)
PROBE = (
    '"$1" -m flexorch_provider.inventory.nvml 2>/dev/null || { '
    f"{shlex.join(GPU_QUERY)} && echo '{SEPARATOR}' && {shlex.join(APPS_QUERY)}; }}"
)


def model_name(raw: str) -> str:
    """'NVIDIA A100-SXM4-80GB' → 'A100', 'Tesla T4' → 'T4', 'NVIDIA GeForce RTX 4090' → 'RTX4090'.

    The job runner's :func:`~flexorch_provider.runner.gpus.gpu_model` does the parsing (it
    matches GPUs on hosts with the same names), so inventory and GPU claims never disagree."""
    head = gpu_model(raw)
    try:
        return normalize_gpu_type(head)
    except ValueError:
        return head[:32] or "UNKNOWN"


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Both nvidia-smi queries' output, :data:`SEPARATOR` between them, as inventory GPUs."""
    gpu_part, _, apps_part = text.partition(SEPARATOR)
    apps = parse_apps(apps_part)
    rows = [dict(row, processes=apps.get(row["uuid"], 0)) for row in parse_gpus(gpu_part)]
    return gpus_from_nvml(rows)


def gpus_from_nvml(rows: list[dict[str, Any]]) -> list[Gpu]:
    """What :func:`flexorch_provider.inventory.nvml.read` returns, as inventory GPUs."""
    out = []
    for r in rows:
        procs = int(r.get("processes") or 0)
        out.append(
            Gpu(
                int(r["index"]),
                model_name(r["name"]),
                r.get("memory_total"),
                r.get("memory_used"),
                r.get("utilization"),
                procs,
                busy=procs > 0,
            )
        )
    return out


def parse_probe(text: str) -> list[Gpu]:
    """A host's answer to :data:`PROBE`: NVML's JSON, or nvidia-smi's CSV."""
    if text.lstrip().startswith("{"):
        return gpus_from_nvml(json.loads(text)["gpus"])
    return parse_nvidia_smi(text)


def probe_ssh(pool: Any) -> list[Node]:
    from flexorch_provider.backends.sshpool import Host, on_host
    from flexorch_provider.fanout import parallel

    hosts = [Host.parse(h) for h in pool.hosts] or [Host()]

    def one(host: Host) -> tuple[int, str, str]:
        return on_host(pool.connection, host, lambda s: s.exec(["sh", "-c", PROBE, "sh", pool.python]))

    nodes = []
    for host, result, error in parallel(hosts, one):
        if error is not None:
            nodes.append(Node(host.label, state="unreachable", detail=str(error).splitlines()[0][:200]))
            continue
        code, out, err = result
        if code != 0:
            why = (
                f"nvidia-smi is not installed, nor flexorch-provider with pynvml for {pool.python}"
                if code == 127
                else (err.strip() or out.strip())[:200]
            )
            nodes.append(Node(host.label, state="no-driver", detail=why))
            continue
        try:
            nodes.append(Node(host.label, parse_probe(out)))
        except (ValueError, KeyError, TypeError) as e:
            nodes.append(
                Node(host.label, state="no-driver", detail=f"unreadable GPU probe output ({e}): {out[:120]!r}")
            )
    return nodes


# --- NVML (this machine) -----------------------------------------------------------------------
def probe_local() -> list[Node]:
    import socket

    from flexorch_provider.inventory import nvml

    host = socket.gethostname()
    try:
        return [Node(host, gpus_from_nvml(nvml.read()))]
    except nvml.NoNvml as e:
        return [Node(host, state="no-driver", detail=str(e))]


# --- Slurm ----------------------------------------------------------------------------------------
SINFO_FORMAT = "NodeList:|,Partition:|,Gres:|,GresUsed:|,StateLong:|"
_GRES = re.compile(r"gpu:(?:([A-Za-z0-9_.\-]+):)?(\d+)")
_USED = re.compile(r"gpu:(?:([A-Za-z0-9_.\-]+):)?(\d+)(?:\(IDX:([^)]*)\))?")


def _indices(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+-\d+", part):
            a, b = map(int, part.split("-"))
            out.update(range(a, b + 1))
        elif part.isdigit():
            out.add(int(part))
    return out


def parse_sinfo(text: str) -> list[Node]:
    """``sinfo -h -N -O`` lines → nodes; GPUs are numbered as Slurm does (GRES order), busy from IDX."""
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 5 or not fields[0] or fields[0] in nodes:
            continue
        name, _, gres, used, state = fields[:5]
        gpus: list[Gpu] = []
        for m in _GRES.finditer(gres):
            model = model_name(m.group(1) or "GPU")
            gpus += [Gpu(len(gpus) + i, model) for i in range(int(m.group(2)))]
        busy: set[int] = set()
        for m in _USED.finditer(used):
            if m.group(3) and m.group(3) != "N/A":
                busy |= _indices(m.group(3))
        for g in gpus:
            g.busy = g.index in busy
        down = any(s in state.lower() for s in ("down", "drain", "fail", "not_responding", "inval"))
        nodes[name] = Node(name, gpus, state="down" if down else "up", detail=state)
    return list(nodes.values())


def probe_slurm(pool: Any) -> list[Node]:
    from flexorch_provider.backends.slurm import Cluster

    argv = ["sinfo", "-h", "-N", "-O", SINFO_FORMAT] + (["-p", pool.partition] if pool.partition else [])
    return parse_sinfo(Cluster(pool.connection).check(argv))


# --- Kubernetes -----------------------------------------------------------------------------------
def probe_kubernetes(pool: Any) -> list[Node]:
    from flexorch_provider.backends.kubernetes import Api

    api = Api(pool.connection)
    selector = ",".join(f"{k}={v}" for k, v in pool.node_selector.items()) or None
    nodes = api.list_nodes(selector)
    nodes = [n for n in nodes if pool.node_selector.items() <= (n["metadata"].get("labels") or {}).items()]
    used: dict[str, int] = {}
    for p in api.list_live_pods_everywhere():
        node = (p.get("spec") or {}).get("nodeName")
        if not node or (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in p["spec"].get("containers") or []:
            res = c.get("resources") or {}
            n = (res.get("limits") or {}).get("nvidia.com/gpu") or (res.get("requests") or {}).get("nvidia.com/gpu")
            used[node] = used.get(node, 0) + int(n or 0)
    out = []
    for n in nodes:
        name = n["metadata"]["name"]
        alloc = int(((n.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu") or 0)
        model = model_name((n["metadata"].get("labels") or {}).get(pool.gpu_label, "GPU"))
        busy = min(used.get(name, 0), alloc)
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (n.get("status") or {}).get("conditions") or []
        )
        gpus = [Gpu(i, model, busy=i < busy) for i in range(alloc)]
        out.append(Node(name, gpus, state="up" if ready else "down", detail="" if ready else "node not Ready"))
    return out


def probe(pool: Any) -> PoolInventory:
    if pool.source == "local":
        nodes = probe_local()
    elif pool.source == "ssh":
        nodes = probe_ssh(pool)
    elif pool.source == "slurm":
        nodes = probe_slurm(pool)
    else:
        nodes = probe_kubernetes(pool)
    return PoolInventory(pool.name, pool.source, nodes)
