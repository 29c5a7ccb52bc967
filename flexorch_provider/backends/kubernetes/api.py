"""The boundary with the kubernetes client: every request the backend makes goes through :class:`Api`.

Results come back as plain dicts (the JSON the API server speaks, see :func:`plain`), and
whatever the client raises (``ApiException``, urllib3 and socket errors, a bad kubeconfig, a
response that does not deserialize) comes back as :class:`ApiError`, a ``BackendError``
raised ``from`` the original, with the HTTP status when there was one. The backend adds what
it was doing and, in ``submit``, turns it into a ``SubmitError``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from flexorch_provider.backends.kubernetes.manifests import CONTAINER
from flexorch_provider.exceptions import (
    ApiError,
    BackendUnavailableError,
    ConfigurationError,
    FlexorchError,
)


def error_text(e: BaseException) -> str:
    """The API server's message for a failed request (its JSON ``message``), else the error's first line."""
    body = getattr(e, "body", None)
    if body:
        try:
            return str(json.loads(body).get("message") or body)[:500]
        except (ValueError, AttributeError):
            return str(body)[:500]
    status, reason = getattr(e, "status", None), getattr(e, "reason", None)
    if isinstance(status, int) and status and isinstance(reason, str):
        return f"HTTP {status} {reason}"[:500]  # an ApiException without a body
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:500]


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Raise whatever the kubernetes client raises in this block as :class:`ApiError` (from it).
    The block holds client calls only, so anything but our own errors is the library's."""
    try:
        yield
    except FlexorchError:
        raise
    except Exception as e:
        status = getattr(e, "status", None)
        raise ApiError(error_text(e), status=status if isinstance(status, int) and status else None) from e


def plain(obj: Any) -> dict[str, Any]:
    """A client model (or dict) as the JSON the API server speaks."""
    if isinstance(obj, dict):
        return obj
    from kubernetes.client import ApiClient

    with library_errors():
        return dict(ApiClient().sanitize_for_serialization(obj))


class Api:
    """The three clients we need, from the Airflow connection (``KubernetesHook``)."""

    core: Any
    batch: Any
    apps: Any

    def __init__(self, conn_id: str) -> None:
        try:
            from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
            from kubernetes import client
        except ImportError as e:
            raise BackendUnavailableError(
                f"the kubernetes target needs apache-airflow-providers-cncf-kubernetes: {e}"
            ) from e
        try:
            api_client = KubernetesHook(conn_id=conn_id).api_client
        except Exception as e:
            if type(e).__name__ == "AirflowNotFoundException":
                raise ConfigurationError(
                    f"the Airflow connection {conn_id!r} does not exist; create it (type kubernetes) or set "
                    "kubernetes.connection in the spec"
                ) from None
            raise ApiError(f"cannot configure the Kubernetes client from connection {conn_id!r}: {e}") from e
        with library_errors():
            self.core = client.CoreV1Api(api_client)
            self.batch = client.BatchV1Api(api_client)
            self.apps = client.AppsV1Api(api_client)

    @classmethod
    def from_clients(cls, core: Any, batch: Any, apps: Any) -> Api:
        """An Api over given clients (CoreV1Api, BatchV1Api, AppsV1Api or stand-ins)."""
        api = cls.__new__(cls)
        api.core, api.batch, api.apps = core, batch, apps
        return api

    def annotate_job(self, ns: str, name: str, annotations: dict[str, str]) -> None:
        with library_errors():
            self.batch.patch_namespaced_job(name, ns, {"metadata": {"annotations": annotations}})

    # --- reads -----------------------------------------------------------------------------
    def list_jobs(self, ns: str, label_selector: str) -> list[dict[str, Any]]:
        with library_errors():
            return list(plain(self.batch.list_namespaced_job(ns, label_selector=label_selector))["items"] or [])

    def list_nodes(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        with library_errors():
            return list(plain(self.core.list_node(label_selector=label_selector))["items"] or [])

    def list_live_pods_everywhere(self) -> list[dict[str, Any]]:
        """Pods of every namespace that may hold resources (not Succeeded, not Failed)."""
        with library_errors():
            live = "status.phase!=Succeeded,status.phase!=Failed"
            return list(plain(self.core.list_pod_for_all_namespaces(field_selector=live))["items"] or [])

    def list_pods(self, ns: str, label_selector: str) -> list[dict[str, Any]]:
        with library_errors():
            return list(plain(self.core.list_namespaced_pod(ns, label_selector=label_selector))["items"] or [])

    def read_claim(self, ns: str, name: str) -> dict[str, Any]:
        with library_errors():
            return plain(self.core.read_namespaced_persistent_volume_claim(name, ns))

    def read_deployment(self, ns: str, name: str) -> dict[str, Any]:
        with library_errors():
            return plain(self.apps.read_namespaced_deployment(name, ns))

    def pod_log(self, ns: str, pod: str, since_ns: int | None = None, timestamps: bool = True) -> bytes:
        """The container's log, with the kubelet's time on every line, from ``since_ns`` (whole
        seconds) on. (The Python client's read_namespaced_pod_log has no sinceTime; the API has.)"""
        query = [("container", CONTAINER)] + ([("timestamps", "true")] if timestamps else [])
        if since_ns is not None:
            query.append(("sinceTime", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since_ns // 10**9))))
        with library_errors():
            response = self.core.api_client.call_api(
                "/api/v1/namespaces/{namespace}/pods/{name}/log",
                "GET",
                path_params={"namespace": ns, "name": pod},
                query_params=query,
                header_params={"Accept": "*/*"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
            )
            return bytes(response.data)

    # --- writes ----------------------------------------------------------------------------
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        ns = obj["metadata"]["namespace"]
        kind = obj["kind"]
        fn = {
            "Job": self.batch.create_namespaced_job,
            "Secret": self.core.create_namespaced_secret,
            "Service": self.core.create_namespaced_service,
            "Deployment": self.apps.create_namespaced_deployment,
        }[kind]
        with library_errors():
            return plain(fn(ns, obj))

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (field manager ``flexorch``): fields we stopped setting are removed,
        which a merge patch would keep."""
        ns, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
        fn = {
            "Secret": self.core.patch_namespaced_secret,
            "Service": self.core.patch_namespaced_service,
            "Deployment": self.apps.patch_namespaced_deployment,
        }[kind]
        with library_errors():
            return plain(
                fn(name, ns, obj, field_manager="flexorch", force=True, _content_type="application/apply-patch+yaml")
            )

    def apply(self, obj: dict[str, Any]) -> str:
        """Create, or replace when it exists: 'created' | 'updated'."""
        try:
            self.create(obj)
            return "created"
        except ApiError as e:
            if e.status != 409:
                raise
        self.replace(obj)
        return "updated"

    def delete(self, kind: str, ns: str, name: str) -> bool:
        """Delete (background propagation): True, or False when it was not there."""
        fn = {
            "Job": self.batch.delete_namespaced_job,
            "Secret": self.core.delete_namespaced_secret,
            "Service": self.core.delete_namespaced_service,
            "Deployment": self.apps.delete_namespaced_deployment,
        }[kind]
        try:
            with library_errors():
                from kubernetes import client

                fn(name, ns, body=client.V1DeleteOptions(propagation_policy="Background"))
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise
