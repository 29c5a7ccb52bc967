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
        "extra-links": ["flexorch_provider.links.RemoteJobLink", "flexorch_provider.links.ServiceLink"],
        "config": {
            "flexorch": {
                "description": "flexorch-provider settings.",
                "options": {
                    "link_templates": {
                        "description": "URL templates of the Remote job / Service links, a JSON object of target "
                        "(or '<target>.service') to template, e.g. "
                        '{"slurm": "https://grafana.example/d/slurm?var-job={slurm_job_id}"}. Unset: the links '
                        "go to the job's or service's view on the flexorch page. A connection's extra "
                        "flexorch_link_template / flexorch_service_link_template wins over this.",
                        "version_added": "0.3.0",
                        "type": "string",
                        "example": '{"slurm": "https://slurm.example/job/{slurm_job_id}"}',
                        "default": "",
                    },
                },
            },
        },
        "integrations": [
            {
                "integration-name": "flexorch",
                "external-doc-url": "https://github.com/flexorch/flexorch-provider",
                "tags": ["software"],
            }
        ],
    }
