"""Target name → backend. A backend whose optional dependency is missing is disabled with a
clear message; the rest of the package keeps working."""

from __future__ import annotations

import importlib

from flexorch_provider.backends.base import Backend
from flexorch_provider.exceptions import BackendUnavailableError

BACKENDS: dict[str, tuple[str, str, str]] = {
    # target: (module, class, pip package that provides its dependency)
    "local": ("flexorch_provider.backends.local", "LocalBackend", "flexorch-provider"),
    "ssh": ("flexorch_provider.backends.ssh", "SshBackend", "apache-airflow-providers-ssh"),
    "kubernetes": (
        "flexorch_provider.backends.kubernetes",
        "KubernetesBackend",
        "apache-airflow-providers-cncf-kubernetes",
    ),
    "slurm": ("flexorch_provider.backends.slurm", "SlurmBackend", "apache-airflow-providers-ssh"),
}


def get_backend(target: str) -> Backend:
    try:
        module_name, class_name, package = BACKENDS[target]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise BackendUnavailableError(
            f"target {target!r} has no backend in this version (available: {known})"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailableError(
            f"the {target} target is disabled: {e}. Install it with: pip install {package}"
        ) from e
    backend: Backend = getattr(module, class_name)()
    return backend
