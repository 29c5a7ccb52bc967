"""What every inventory source returns, and how a request is placed on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from flexorch_provider.spec.units import normalize_gpu_type


@dataclass
class Gpu:
    index: int
    model: str  # normalized: "A100", "T4"
    memory_total: int | None = None  # MiB
    memory_used: int | None = None  # MiB
    utilization: int | None = None  # percent
    processes: int = 0
    busy: bool = False  # allocated by a scheduler, or running compute processes

    @property
    def memory_free(self) -> int | None:
        if self.memory_total is None or self.memory_used is None:
            return None
        return self.memory_total - self.memory_used


@dataclass
class Node:
    """One host (ssh, local) or node (slurm, kubernetes) and its GPUs."""

    name: str
    gpus: list[Gpu] = field(default_factory=list)
    state: str = "up"  # up | unreachable | no-driver | down
    detail: str = ""

    def free(
        self, gpu_type: str | None = None, min_free_memory: int | None = None, max_utilization: int | None = None
    ) -> list[Gpu]:
        out = []
        for g in self.gpus:
            if g.busy or (gpu_type and g.model != normalize_gpu_type(gpu_type)):
                continue
            if min_free_memory is not None and g.memory_free is not None and g.memory_free < min_free_memory:
                continue
            if max_utilization is not None and g.utilization is not None and g.utilization > max_utilization:
                continue
            out.append(g)
        return out if self.state == "up" else []

    def models(self) -> dict[str, tuple[int, int]]:
        """model → (total, free) on this node: mixed models are counted apart."""
        out: dict[str, tuple[int, int]] = {}
        for g in self.gpus:
            total, free = out.get(g.model, (0, 0))
            out[g.model] = (total + 1, free + (0 if g.busy else 1))
        return out


@dataclass
class PoolInventory:
    pool: str
    source: str
    nodes: list[Node] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(n.gpus) for n in self.nodes)

    @property
    def free(self) -> int:
        return sum(len(n.free()) for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_placement(
    inv: PoolInventory,
    gpus: int,
    gpu_type: str | None = None,
    min_free_memory: int | None = None,
    max_utilization: int | None = None,
) -> dict[str, Any] | None:
    """The first node (in pool order) with ``gpus`` free GPUs that fit; None when none does."""
    for node in inv.nodes:
        fit = node.free(gpu_type, min_free_memory, max_utilization)
        if len(fit) >= gpus:
            chosen = fit[:gpus]
            return {
                "pool": inv.pool,
                "source": inv.source,
                "host": node.name,
                "gpus": [g.index for g in chosen],
                "model": chosen[0].model if chosen else None,
            }
    return None
