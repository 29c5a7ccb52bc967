"""GPU inventory: what GPUs a pool has and which are free, from four kinds of sources.

::

    local        this machine, through NVML (pynvml)
    ssh          hosts over SSH, all in parallel: NVML through ``python3 -m flexorch_provider.nvml``
                 where flexorch-provider is installed, else ``nvidia-smi --query-gpu`` CSV
    slurm        GRES total/used per node (``sinfo``), locally or on a login node
    kubernetes   node allocatable ``nvidia.com/gpu`` minus the requests of live pods

Every source returns the same :class:`Node` list, so placement, ``flexorch gpus`` and the
pool sensor never care where the numbers came from. Pools are defined once in a YAML file
(:mod:`flexorch_provider.inventory.pools`).
"""

from __future__ import annotations

from flexorch_provider.inventory.model import Gpu, Node, PoolInventory, find_placement

__all__ = ["Gpu", "Node", "PoolInventory", "find_placement", "inventory"]


def inventory(pool) -> PoolInventory:  # type: ignore[no-untyped-def]
    """The current inventory of one pool (a :class:`~flexorch_provider.inventory.pools.GpuPool`)."""
    from flexorch_provider.inventory import sources

    return sources.probe(pool)
