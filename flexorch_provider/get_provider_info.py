"""Airflow provider entry point (group ``apache_airflow_provider``).

Keep this module free of heavy imports: every ``airflow`` command calls it.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    from flexorch_provider import __version__

    return {
        "package-name": "flexorch-provider",
        "name": "flexorch",
        "description": "Run services, training, batch and inference jobs on Kubernetes, SSH fleets, "
        "Slurm or the worker itself from one YAML spec.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "flexorch",
                "external-doc-url": "https://github.com/flexorch/flexorch-provider",
                "tags": ["software"],
            }
        ],
    }
