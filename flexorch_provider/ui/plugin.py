"""The Airflow plugin (entry point ``airflow.plugins``): mounts the flexorch app at ``/flexorch``.

Every Airflow process may load plugins; the app (FastAPI, Airflow's auth dependencies) is built
only when the api-server serves its first request, so loading the plugin costs nothing elsewhere."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin


class LazyApp:
    """An ASGI app that builds :func:`flexorch_provider.ui.api.create_app` on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from flexorch_provider.ui.api import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class FlexorchPlugin(AirflowPlugin):
    name = "flexorch"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": "/flexorch", "name": "flexorch"}]
    # the page in the UI's navigation, and a job tab on every task instance (inside the UI's frame)
    external_views = [
        {"name": "flexorch", "href": "/flexorch/", "destination": "nav", "url_route": "flexorch", "category": "browse"},
        {
            "name": "flexorch job",
            "href": "/flexorch/jobs/{DAG_ID}/{RUN_ID}/{TASK_ID}?map_index={MAP_INDEX}",
            "destination": "task_instance",
            "url_route": "flexorch-job",
        },
    ]
