"""Choosing among a spec's targets by what they have free now (``target_policy: first-free``).

Each listed target's GPUs are read from the same inventory sources as ``flexorch gpus``
(:mod:`flexorch_provider.inventory`), with the pool its backend builds from the spec's own section
(``Backend.gpu_pool``: the ssh hosts and connection, the Slurm connection and partition, the
Kubernetes connection and node selector, or this machine). A target *fits* when enough of its nodes each
have the GPUs one node of the job asks for (count, type, memory) free now::

    seen = survey(workload, ["slurm", "ssh"])   # in parallel; an unreadable target is "unknown"
    order(["slurm", "ssh"], seen)               # the targets that fit first, each group in list order

A job without GPUs has nothing to measure: every target is "unknown" and the list order stands
(``max_pending`` still moves such a job). Nothing here submits or holds anything: the target
chosen may be full by the time the job arrives, and its scheduler then queues it as usual.
"""

from __future__ import annotations

from typing import Any

from flexorch_provider.fanout import parallel, reason
from flexorch_provider.placement.choice import Seen


def request(workload: Any) -> tuple[int, str | None, int | None, int] | None:
    """(GPUs per node, type, minimum free MiB per GPU, nodes), or None for a job without GPUs."""
    gpus = workload.resources.gpus
    if gpus is None or gpus.count == 0:
        return None
    return gpus.count, gpus.type, gpus.memory // 2**20 if gpus.memory else None, workload.resources.nodes


def judge(target: str, inv: Any, want: tuple[int, str | None, int | None, int], every_node: bool = False) -> Seen:
    """Whether ``inv`` (a PoolInventory) fits ``want`` now. ``every_node``: the job runs on every
    node of the pool (ssh ``placement: all``), so every one must fit."""
    count, gpu_type, min_mib, nodes = want
    fitting = [n for n in inv.nodes if len(n.free(gpu_type, min_mib)) >= count]
    of_type = [g for n in inv.nodes for g in n.gpus if not gpu_type or g.model == gpu_type]
    free = sum(len(n.free(gpu_type, min_mib)) for n in inv.nodes)
    down = [f"{n.name} {n.state}" + (f" ({n.detail})" if n.detail else "") for n in inv.nodes if n.state != "up"]
    need = len(inv.nodes) if every_node else nodes
    fits = len(fitting) >= need and bool(inv.nodes)
    models: dict[str, int] = {}
    for g in of_type:
        models[g.model] = models.get(g.model, 0) + 1
    kinds = f" ({', '.join(f'{m} ×{n}' for m, n in models.items())})" if models else ""
    memory = f" with {min_mib} MiB free" if min_mib else ""
    spread = "on every host" if every_node else f"on {nodes} node{'s' if nodes != 1 else ''}"
    detail = f"{free} of {len(of_type)} {gpu_type or 'GPU'}s free{kinds}; needs {count}{memory} per node {spread}"
    if fits:
        detail += ": " + ", ".join(n.name for n in fitting[:need])
    if down:
        detail += "; not usable: " + ", ".join(down)[:300]
    return Seen(target, fits, free, len(of_type), detail)


def capacity(workload: Any, target: str) -> Seen:
    """What ``target`` has free now for ``workload``'s GPU request."""
    want = request(workload)
    if want is None:
        return Seen(target, None, detail="the job asks for no GPUs")
    from flexorch_provider.backends.registry import get_backend
    from flexorch_provider.inventory import sources

    backend = get_backend(target)
    pool = backend.gpu_pool(workload)
    if pool is None:
        return Seen(target, None, detail="this target does not report its free GPUs")
    try:
        inv = sources.probe(pool)
    except Exception as e:  # an unreadable target is not known to be full: it keeps its place in the list
        return Seen(target, None, detail=f"cannot read its GPUs: {reason(e)}")
    return judge(target, inv, want, every_node=backend.spans_every_node(workload))


def survey(workload: Any, targets: list[str]) -> list[Seen]:
    """:func:`capacity` of every target at once, in list order."""
    return [
        seen if error is None else Seen(target, None, detail=f"cannot read its GPUs: {reason(error)}")
        for target, seen, error in parallel(targets, lambda t: capacity(workload, t))
    ]


def order(targets: list[str], seen: list[Seen]) -> list[str]:
    """The targets that fit now first, then the others; each group keeps the spec's order."""
    fits = {s.target for s in seen if s.fits}
    return [t for t in targets if t in fits] + [t for t in targets if t not in fits]
