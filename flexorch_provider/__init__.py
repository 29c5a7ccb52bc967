"""flexorch: run services, training, batch and inference jobs from Apache Airflow.

Public names are imported lazily: Airflow imports this package during provider
discovery, and that must stay cheap and must not pull in optional backends.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FlexOperator": "flexorch_provider.operators.flex",
    "FlexServiceOperator": "flexorch_provider.operators.service",
    "FlexJobTrigger": "flexorch_provider.triggers.job",
    "GpuPoolSensor": "flexorch_provider.sensors.gpu_pool",
    "load_spec": "flexorch_provider.spec.loader",
    "load_spec_text": "flexorch_provider.spec.loader",
    "parse_spec": "flexorch_provider.spec.loader",
    "SpecError": "flexorch_provider.exceptions",
    "FlexorchError": "flexorch_provider.exceptions",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flexorch_provider' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
