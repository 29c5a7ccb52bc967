"""What a folder's DAGs need from this Airflow before they can run: the connections their specs name.

``flexorch up`` creates every DAG paused and unpauses a DAG only when each connection its spec
names exists (an ``AIRFLOW_CONN_*`` variable of the stack, or one in its database). The others
stay paused, listed with what they need, so a scheduled example never fails on a cluster or a
host this machine does not have. A spec with a list of targets needs the connections of all of
them (the fallback must be able to run too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexorch_provider.spec.loader import iter_spec_files, load_spec
from flexorch_provider.spec.render import spec_to_dict

TARGETS_WITH_CONNECTIONS = ("ssh", "slurm", "kubernetes")
SECRET_PREFIX = "connection:"


@dataclass(frozen=True)
class Needs:
    """One spec's DAG ids and the connections it names: ``{conn_id: what for}``."""

    spec: str
    dag_ids: tuple[str, ...]
    connections: dict[str, str]

    def missing(self, have: Callable[[str], bool]) -> list[str]:
        return [f"connection {c} ({why})" for c, why in sorted(self.connections.items()) if not have(c)]


def _units(data: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """The spec, or each pipeline step with what it inherits filled in."""
    steps = data.get("steps")
    return steps if steps else [data]


def connections_of(data: dict[str, Any]) -> dict[str, str]:
    """The connections a spec (``spec_to_dict`` form) names, each with what it is for."""
    found: dict[str, str] = {}
    for unit in _units(data):
        targets = unit.get("target") or []
        for target in [targets] if isinstance(targets, str) else targets:
            block = unit.get(target) if target in TARGETS_WITH_CONNECTIONS else None
            conn = block.get("connection") if isinstance(block, dict) else None
            if conn:
                found.setdefault(str(conn), f"{target} target")
        for name, ref in (unit.get("secrets") or {}).items():
            if isinstance(ref, str) and ref.startswith(SECRET_PREFIX):
                found.setdefault(ref[len(SECRET_PREFIX) :].split(".", 1)[0], f"secret {name}")
        container = unit.get("container")
        if isinstance(container, dict) and container.get("registry_connection"):
            found.setdefault(str(container["registry_connection"]), "image registry login")
    return found


def folder_needs(specs_dir: Path) -> list[Needs]:
    """Every valid spec of the folder; invalid ones are left to their error DAG."""
    from flexorch_provider.dag_factory.plan import plan_dags

    out: list[Needs] = []
    for path in iter_spec_files([specs_dir]):
        try:
            spec = load_spec(path)
            dag_ids = tuple(p.dag_id for p in plan_dags(spec, path.name))
        except Exception:
            continue
        out.append(Needs(spec.name, dag_ids, connections_of(spec_to_dict(spec))))
    return out
