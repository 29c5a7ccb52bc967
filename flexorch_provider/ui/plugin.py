"""The Airflow plugin (entry point ``airflow.plugins``): mounts the flexorch app at ``/flexorch``."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from flexorch_provider.ui.api import create_app


class FlexorchPlugin(AirflowPlugin):
    name = "flexorch"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/flexorch", "name": "flexorch"}]
