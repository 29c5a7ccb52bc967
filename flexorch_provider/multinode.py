"""What every node of a multi-node job (``resources.nodes: N``, N > 1) finds in its environment,
on every target that runs one (the README's "Multi-node jobs"):

- ``FLEXORCH_NODE_RANK``: this node, 0 .. N-1; ``FLEXORCH_NNODES``: N;
- ``FLEXORCH_NODE_ADDRS``: every node's address, comma-separated, in rank order;
- ``FLEXORCH_GPUS_PER_NODE``: the GPUs each node holds for the job (0 without GPUs);
- ``FLEXORCH_MASTER_ADDR`` / ``FLEXORCH_MASTER_PORT``: rank 0's address and a port for the group
  to meet on;
- the same values under the names the launchers read: ``NODE_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT`` and torchrun's own ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
  ``PET_MASTER_PORT``, so that a bare ``torchrun --nproc-per-node 8 train.py`` forms one group.

``WORLD_SIZE`` and ``RANK`` are not set: they count processes, which the launcher starts (torchrun
sets them for each of its workers); a node-level value would be wrong for every job that starts
more than one process per node.

Each target fills the primary ``FLEXORCH_*`` values its own way (Slurm from its allocation,
Kubernetes from the indexed Job's completion index and its pods' DNS names, an ssh fleet from the
hosts its gang start chose, in the spec's order, and a port free on the first); the other names
are copies, defined here once.
"""

from __future__ import annotations

RANK, NNODES, ADDRS, GPUS, MASTER_ADDR, MASTER_PORT = (
    "FLEXORCH_NODE_RANK",
    "FLEXORCH_NNODES",
    "FLEXORCH_NODE_ADDRS",
    "FLEXORCH_GPUS_PER_NODE",
    "FLEXORCH_MASTER_ADDR",
    "FLEXORCH_MASTER_PORT",
)
# name → the primary variable it copies
COPIES = {
    "NODE_RANK": RANK,
    "MASTER_ADDR": MASTER_ADDR,
    "MASTER_PORT": MASTER_PORT,
    "PET_NNODES": NNODES,
    "PET_NODE_RANK": RANK,
    "PET_MASTER_ADDR": MASTER_ADDR,
    "PET_MASTER_PORT": MASTER_PORT,
}
DEFAULT_PORT = 29500  # where each node has a network of its own (a Kubernetes pod)
# Slurm: nodes are shared between jobs, so the port comes from the job id (as PyTorch Lightning
# does): two jobs whose first node is the same do not meet on one port
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 20000


def shell_copies(rank_expr: str = f'"${RANK}"') -> list[str]:
    """``export`` lines for the copies, after the primary variables are exported (the rank from
    ``rank_expr``, a shell word)."""
    lines = [f"export {RANK}={rank_expr}"]
    lines += [f'export {name}="${source}"' for name, source in COPIES.items()]
    return lines


def contract(rank: int, addrs: list[str], gpus: int, port: int) -> dict[str, str]:
    """The whole contract for node ``rank`` as environment values (the ssh target, which knows every
    node's address before any starts)."""
    env = {
        RANK: str(rank),
        NNODES: str(len(addrs)),
        ADDRS: ",".join(addrs),
        GPUS: str(gpus),
        MASTER_ADDR: addrs[0],
        MASTER_PORT: str(port),
    }
    env.update({name: env[source] for name, source in COPIES.items()})
    return env


def kubernetes_env(job_name: str, service: str, nodes: int, gpus: int) -> list[dict[str, object]]:
    """The contract as a pod's env entries: the rank from the indexed Job's completion index, the
    addresses the pods' DNS names under the headless Service (``<job>-<index>.<service>``); the
    copies use Kubernetes' ``$(VAR)`` expansion of earlier entries."""
    addrs = [f"{job_name}-{i}.{service}" for i in range(nodes)]
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    env: list[dict[str, object]] = [
        {"name": RANK, "valueFrom": {"fieldRef": {"fieldPath": index}}},
        {"name": NNODES, "value": str(nodes)},
        {"name": ADDRS, "value": ",".join(addrs)},
        {"name": GPUS, "value": str(gpus)},
        {"name": MASTER_ADDR, "value": addrs[0]},
        {"name": MASTER_PORT, "value": str(DEFAULT_PORT)},
    ]
    env += [{"name": name, "value": f"$({source})"} for name, source in COPIES.items()]
    return env
