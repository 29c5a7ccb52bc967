"""Secret values out of job output.

A job carries its secrets' *references* (``JobHandle.secret_refs``: where each value lives,
never the value). Whoever follows the job (the worker before it defers, the trigger after)
resolves them into a :class:`Masker` and masks every line before logging it. The ssh and
local runners also mask at the source; Slurm and Kubernetes jobs write their output where
we cannot, so this is the one place their lines are masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flexorch_provider.runner import logs as runner_logs
from flexorch_provider.spec.workload import Workload

# The one implementation: the job runner masks its output stream with it on the hosts.
Masker = runner_logs.Masker
MASK = runner_logs.MASK
REGISTRY_REF = "container.registry_connection"  # the registry password's entry in a handle's secret_refs


def secret_refs(workload: Workload) -> dict[str, dict[str, Any]]:
    """What a handle carries about the workload's Airflow-resolved secrets: references only
    (the registry password of a private image among them)."""
    refs = {name: ref.model_dump() for name, ref in workload.airflow_secrets.items()}
    registry = workload.container.registry_connection
    if workload.image and registry:
        refs[REGISTRY_REF] = {"source": "connection", "name": registry, "key": "password"}
    return refs


def masker_for(refs: Mapping[str, Mapping[str, Any]]) -> Masker:
    """Resolve a handle's secret references into a masker (blocking: a trigger calls it in a
    thread). Each value is also registered with Airflow's own redaction of this process's logs."""
    if not refs:
        return Masker([])
    from airflow.sdk.log import mask_secret

    from flexorch_provider.resolve import resolve_secret
    from flexorch_provider.spec.fields import SecretRef

    values = []
    for name, ref in refs.items():
        value = resolve_secret(name, SecretRef.model_validate(ref))
        mask_secret(value, name)
        values.append(value)
    return Masker(values)
