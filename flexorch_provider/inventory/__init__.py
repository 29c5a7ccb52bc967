"""GPU inventory: what GPUs a pool has and which are free, from four kinds of sources.

::

    local        this machine, through NVML (pynvml)
    ssh          hosts over SSH, all in parallel: NVML through ``python3 -m flexorch_provider.inventory.nvml``
                 where flexorch-provider is installed, else ``nvidia-smi --query-gpu`` CSV
    slurm        GRES total/used per node (``sinfo``), locally or on a login node
    kubernetes   node allocatable ``nvidia.com/gpu`` minus the requests of live pods

Every source returns the same :class:`Node` list, so placement, ``flexorch gpus`` and the
pool sensor never care where the numbers came from. Pools are defined once in a YAML file
(:mod:`flexorch_provider.inventory.pools`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flexorch_provider.inventory.model import Gpu, Node, PoolInventory, find_placement
    from flexorch_provider.inventory.pools import GpuPool

__all__ = ["Gpu", "Node", "PoolInventory", "check_pool", "find_placement", "inventory"]
_MODEL = ("Gpu", "Node", "PoolInventory", "find_placement")


def __getattr__(name: str) -> Any:
    """The model's names, imported on first use: a host runs ``python3 -m
    flexorch_provider.inventory.nvml``, which must not pay for the spec models (pydantic)."""
    if name in _MODEL:
        from flexorch_provider.inventory import model

        return getattr(model, name)
    raise AttributeError(f"module 'flexorch_provider.inventory' has no attribute {name!r}")


def inventory(pool: GpuPool) -> PoolInventory:
    """The current inventory of one pool (from gpu_pools.yaml)."""
    from flexorch_provider.inventory import sources

    return sources.probe(pool)


def check_pool(
    pool: str,
    pools_file: str | None,
    gpus: int,
    gpu_type: str | None,
    min_free_mib: int | None,
    max_utilization: int | None,
) -> tuple[dict[str, Any] | None, str]:
    """(placement or None, one line on the pool's state): what GpuPoolSensor and its trigger ask."""
    from flexorch_provider.inventory.model import find_placement
    from flexorch_provider.inventory.pools import get_pool

    inv = inventory(get_pool(pool, pools_file))
    placement = find_placement(inv, gpus, gpu_type, min_free_mib, max_utilization)
    down = [f"{n.name} ({n.state}: {n.detail})" for n in inv.nodes if n.state != "up"]
    want = f"{gpus} {gpu_type or 'GPU'}{'s' if gpus != 1 else ''}"
    line = f"pool {pool}: {inv.free} of {inv.total} GPUs free; need {want} on one node"
    if down:
        line += "; not usable: " + ", ".join(down)
    return placement, line
