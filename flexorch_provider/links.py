"""Extra links on FlexOperator tasks: "Remote job" (where the job runs) and "Service" (its replicas).

In Airflow 3 the api-server never computes a link: the worker stores each link's URL in XCom
(key ``_link_<class>``). The operator pushes the URL as soon as the job is submitted, so the
link works while the job runs; ``get_link`` hands the same URL back when the task finalizes.

A link goes to a URL template when one is configured for the job's target, else to the job's
view on the flexorch page (``/flexorch/jobs/...``). Templates, most specific first:

- the extra ``flexorch_link_template`` (``flexorch_service_link_template`` for services) of the
  Airflow connection the job runs through;
- ``[flexorch] link_templates`` (``AIRFLOW__FLEXORCH__LINK_TEMPLATES``): a JSON object of target
  → template; ``"<target>.service"`` for services, e.g.
  ``{"slurm": "https://grafana.example/d/slurm?var-job={slurm_job_id}"}``.

A template names fields in braces: ``{target} {job_id} {dag_id} {task_id} {run_id} {map_index}``
and what the target says of the job (``Backend.where``): ``{host} {run_dir}`` (local, ssh),
``{slurm_job_id} {job_name}`` (slurm), ``{namespace} {job_name}`` (kubernetes), ``{conn}``;
``{service}`` for services. Values are URL-quoted. A template naming a field the job does not
have falls back to the flexorch page (and the task log says which field).
"""

from __future__ import annotations

import json
import logging
import string
from typing import Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

from flexorch_provider.records import JobRecord

log = logging.getLogger(__name__)

JOB_TEMPLATE_EXTRA = "flexorch_link_template"
SERVICE_TEMPLATE_EXTRA = "flexorch_service_link_template"


class RemoteJobLink(BaseOperatorLink):
    """The Slurm job, Kubernetes Job or host + run directory of a FlexOperator's job."""

    name = "Remote job"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return _stored(ti_key, self.xcom_key)


class ServiceLink(BaseOperatorLink):
    """A service's replicas and the hosts or pods they run on."""

    name = "Service"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return _stored(ti_key, self.xcom_key)


def _stored(ti_key: Any, key: str) -> str:
    """The URL the operator pushed (finalize stores what this returns, so it must be that URL)."""
    from airflow.sdk.execution_time.xcom import XCom

    value = XCom.get_value(ti_key=ti_key, key=key)
    return value if isinstance(value, str) else ""


# --- URLs -------------------------------------------------------------------------------------
def base_url() -> str:
    """The api-server's public URL (``[api] base_url``), without a trailing slash; "" when unset
    (links are then relative to the UI's own host)."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "").rstrip("/")


def page_url(*parts: str, query: dict[str, Any] | None = None) -> str:
    path = "/".join(quote(str(p), safe="") for p in parts)
    tail = f"?{urlencode(query)}" if query else ""
    return f"{base_url()}/flexorch/{path}{tail}"


def job_page_url(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    query = {"map_index": map_index} if map_index is not None and map_index >= 0 else None
    return page_url("jobs", dag_id, run_id, task_id, query=query)


def service_page_url(name: str) -> str:
    return page_url("services", name)


def configured_templates() -> dict[str, str]:
    """``[flexorch] link_templates``: target (or ``<target>.service``) → URL template."""
    from airflow.configuration import conf

    raw = conf.get("flexorch", "link_templates", fallback="") or ""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        log.warning("[flexorch] link_templates is not JSON (%s): links go to the flexorch page", e)
        return {}
    if not isinstance(data, dict):
        log.warning("[flexorch] link_templates must be a JSON object of target → URL template")
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def template_for(target: str, conn_id: str | None, service: bool = False) -> str | None:
    """The URL template for a job (or service) on ``target``: the connection's extra, else the config."""
    if conn_id:
        try:
            from airflow.sdk import BaseHook

            extra = BaseHook.get_connection(conn_id).extra_dejson
        except Exception:  # a missing connection fails the job elsewhere, with its own message
            extra = {}
        value = extra.get(SERVICE_TEMPLATE_EXTRA if service else JOB_TEMPLATE_EXTRA)
        if isinstance(value, str) and value.strip():
            return value
    return configured_templates().get(f"{target}.service" if service else target)


def fill(template: str, fields: dict[str, Any]) -> str:
    """``template`` with each ``{field}`` replaced by its URL-quoted value; KeyError names a missing one."""
    out = []
    for literal, name, spec, conv in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if spec or conv or name not in fields:
            raise KeyError(name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else ""))
        out.append(quote(str(fields[name]), safe=""))
    return "".join(out)


def link_fields(ti: Any, target: str, own: dict[str, Any]) -> dict[str, Any]:
    """What a template may name: the task's coordinates, the target and the job's (or service's) own
    fields."""
    fields: dict[str, Any] = {k: v for k, v in own.items() if isinstance(v, str | int)}
    fields.update(
        target=target, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=getattr(ti, "map_index", -1)
    )
    return fields


def job_url(ti: Any, record: JobRecord) -> str:
    """The "Remote job" link of the job ``record`` describes (the operator's ``job`` XCom)."""
    conn = record.where.get("conn")
    fields = {**record.where, "job_id": record.job_id}
    url = _templated(ti, record.target, conn if isinstance(conn, str) else None, fields, service=False)
    if url is not None:
        return url
    map_index = getattr(ti, "map_index", -1)
    return job_page_url(ti.dag_id, ti.run_id, ti.task_id, -1 if map_index is None else int(map_index))


def service_url(ti: Any, name: str, target: str, conn: str | None = None) -> str:
    """The "Service" link of service ``name`` running on ``target`` (through ``conn``)."""
    url = _templated(ti, target, conn, {"service": name}, service=True)
    return url if url is not None else service_page_url(name)


def _templated(ti: Any, target: str, conn: str | None, own: dict[str, Any], service: bool) -> str | None:
    template = template_for(target, conn, service=service)
    if not template:
        return None
    try:
        return fill(template, link_fields(ti, target, own))
    except (KeyError, ValueError) as e:
        log.warning("link template %r cannot be filled (%s): the link goes to the flexorch page", template, e)
        return None


def push(ti: Any, link: type[BaseOperatorLink], url: str) -> None:
    ti.xcom_push(key=link().xcom_key, value=url)
