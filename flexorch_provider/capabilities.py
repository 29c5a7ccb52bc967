"""What each target can do: the one table that spec validation, the DAG factory, the backends and
the service watcher read.

- ``services``: keeps long-running services (deploy, reconcile, undeploy; ``Backend.service``);
- ``self_healing``: its own control plane restores a service's replicas (Kubernetes); the others
  need flexorch's reconcile runs and watcher to do it;
- ``capacity``: can say what GPUs it has free now (``Backend.gpu_pool``), so ``first-free`` and
  ``max_pending`` can weigh it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    services: bool
    self_healing: bool
    capacity: bool


CAPABILITIES: dict[str, Capabilities] = {
    "kubernetes": Capabilities(services=True, self_healing=True, capacity=True),
    "ssh": Capabilities(services=True, self_healing=False, capacity=True),
    "slurm": Capabilities(services=False, self_healing=False, capacity=True),
    "local": Capabilities(services=True, self_healing=False, capacity=True),
}
TARGETS = tuple(CAPABILITIES)
SERVICE_TARGETS = tuple(t for t, c in CAPABILITIES.items() if c.services)
ONE_MACHINE_TARGETS = ("local",)  # it starts a job on one machine: resources.nodes must be 1
SELF_HEALING_TARGETS = frozenset(t for t, c in CAPABILITIES.items() if c.self_healing)


def of(target: str) -> Capabilities:
    """The capabilities of ``target`` (a target flexorch does not know can do nothing)."""
    return CAPABILITIES.get(target, Capabilities(services=False, self_healing=False, capacity=False))
