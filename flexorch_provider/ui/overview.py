"""What the flexorch page shows, read in the api-server: GPU pools, flex jobs, services.

- **Pools** from ``gpu_pools.yaml`` (the inventory behind ``flexorch gpus``), one shared reading
  per pool.
- **Jobs** from Airflow itself: task instances of flexorch operators that are waiting or running,
  each with the ``job`` XCom its operator pushed at submit (where it runs, how to find it); their
  live states come from the backends, one shared poll per batch (as the trigger polls).
- **Services** from the specs folder (``kind: service`` and service steps), each service's
  replicas read from its hosts or pods, one shared reading per service.

Every reading goes through :class:`~flexorch_provider.ui.cache.Shared`: ten open pages cost one
sweep, and a slow or dead source shows as such without holding up the rest.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from flexorch_provider.fanout import parallel, reason
from flexorch_provider.records import JobRecord
from flexorch_provider.ui.cache import Reading, Shared

SHARED = Shared(ttl=float(os.environ.get("FLEXORCH_UI_TTL", "10")), wait=float(os.environ.get("FLEXORCH_UI_WAIT", "3")))
POOL_TTL = float(os.environ.get("FLEXORCH_UI_POOL_TTL", "15"))
LIVE_TI_STATES = ("scheduled", "queued", "running", "deferred", "up_for_reschedule", "restarting")
FLEX_OPERATORS = ("FlexOperator", "SubmittedStepOperator")
LOG_TAIL = 50
# pushed by a service's task as it starts (not the Service link's key: Airflow stores every link's
# key, empty, when any FlexOperator task defers)
SERVICE_MARK = "service"


def specs_dir() -> Path:
    """The specs folder the dags folder's loader reads (the dag factory's own rule)."""
    from airflow.configuration import conf

    from flexorch_provider.dag_factory.folder import specs_dir_for
    from flexorch_provider.dev.stack import LOADER_FILE

    return specs_dir_for(Path(conf.get("core", "dags_folder")) / LOADER_FILE)


# --- pools -------------------------------------------------------------------------------------
def _pool_view(inv: dict[str, Any]) -> dict[str, Any]:
    nodes = []
    for n in inv["nodes"]:
        gpus = n["gpus"]
        free = [g for g in gpus if not g["busy"]] if n["state"] == "up" else []
        mem = [g["memory_total"] - g["memory_used"] for g in free
               if g.get("memory_total") is not None and g.get("memory_used") is not None]  # fmt: skip
        nodes.append({"name": n["name"], "state": n["state"], "detail": n["detail"], "total": len(gpus),
                      "free": len(free), "models": sorted({g["model"] for g in gpus}),
                      # per free GPU, smallest and largest, as `flexorch gpus` shows it (what a task asks for)
                      "free_memory_per_gpu_mib": [min(mem), max(mem)] if mem else None, "gpus": gpus})  # fmt: skip
    return {"total": sum(n["total"] for n in nodes), "free": sum(n["free"] for n in nodes), "nodes": nodes}


def pools(only: str | None = None) -> dict[str, Any]:
    from flexorch_provider.exceptions import FlexorchError
    from flexorch_provider.inventory import inventory
    from flexorch_provider.inventory.pools import load_pools, pools_file

    try:
        defined = load_pools()
    except FlexorchError as e:
        return {"file": str(pools_file()), "error": str(e), "pools": []}
    chosen = [p for name, p in defined.items() if only in (None, "", name)]

    def read(pool: Any) -> dict[str, Any]:
        r = SHARED.get(f"pool:{pool.name}", lambda: inventory(pool).to_dict(), ttl=POOL_TTL)
        row: dict[str, Any] = {"pool": pool.name, "source": pool.source, "airflow_pool": pool.airflow_pool,
                               "reading": r.public()}  # fmt: skip
        row.update(_pool_view(r.value) if r.value else {"total": None, "free": None, "nodes": []})
        return row

    return {"file": str(pools_file()), "pools": [out for _, out, _ in parallel(chosen, read)]}


# --- jobs ----------------------------------------------------------------------------------------
def _tis(session: Any, dag_ids: Collection[str] | None, live_only: bool = True, **match: Any) -> list[Any]:
    from airflow.models.taskinstance import TaskInstance as TI
    from sqlalchemy import select

    q = select(TI).where(TI.operator.in_(FLEX_OPERATORS))
    if live_only:
        q = q.where(TI.state.in_(LIVE_TI_STATES))
    for column, value in match.items():
        q = q.where(getattr(TI, column) == value)
    if dag_ids is not None:
        q = q.where(TI.dag_id.in_(list(dag_ids)))
    return list(session.scalars(q.order_by(TI.start_date.desc().nulls_last()).limit(2000)))


def _job_xcoms(session: Any, tis: Iterable[Any]) -> dict[tuple[str, str, str, int], JobRecord | None]:
    """Each task's ``job`` record; None for a task marked as a service's (deploy, reconcile, watch)."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    tis = list(tis)
    if not tis:
        return {}
    q = select(XComModel).where(XComModel.key.in_(("job", SERVICE_MARK)), XComModel.dag_id.in_({t.dag_id for t in tis}),
                                XComModel.run_id.in_({t.run_id for t in tis}))  # fmt: skip
    out: dict[tuple[str, str, str, int], JobRecord | None] = {}
    for x in session.scalars(q):
        where = (x.dag_id, x.run_id, x.task_id, x.map_index)
        if x.key == SERVICE_MARK:  # a service's deploy/reconcile: the services list shows it
            out[where] = None
        elif where not in out and (record := JobRecord.from_dict(XComModel.deserialize_value(x))) is not None:
            out[where] = record
    return out


def ti_url(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    from urllib.parse import quote

    from flexorch_provider.links import base_url

    url = f"{base_url()}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}"
    return url + (f"/mapped/{map_index}" if map_index >= 0 else "")


def _statuses(handles: list[Any]) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any]]]:
    """run_key → (status dict or None, reading), one shared poll per batch key."""
    from flexorch_provider.backends.registry import get_backend

    batches: dict[str, list[Any]] = {}
    for h in handles:
        try:
            key = f"{h.target}|{get_backend(h.target).batch_key(h)}"
        except Exception as e:
            key = f"{h.target}|unavailable: {reason(e)}"
        batches.setdefault(key, []).append(h)

    def poll(item: tuple[str, list[Any]]) -> tuple[Reading, list[Any]]:
        key, group = item
        ids = hashlib.sha256("\0".join(sorted(h.run_key for h in group)).encode()).hexdigest()[:16]

        def fetch() -> dict[str, Any]:
            found = get_backend(group[0].target).poll(group)
            return {job_id: s.to_dict() for job_id, s in found.items()}

        return SHARED.get(f"poll:{key}:{ids}", fetch), group

    out: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {}
    for _, result, error in parallel(list(batches.items()), poll):
        if error is not None or result is None:
            continue
        r, group = result
        for h in group:
            out[h.run_key] = ((r.value or {}).get(h.job_id), r.public())
    return out


def _job_row(ti: Any, record: JobRecord | None, now: float) -> dict[str, Any]:
    map_index = int(ti.map_index if ti.map_index is not None else -1)
    row: dict[str, Any] = {
        "dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": map_index,
        "try_number": ti.try_number, "ti_state": ti.state, "ti_url": ti_url(ti.dag_id, ti.run_id, ti.task_id, map_index),
        "pool": ti.pool, "pool_slots": ti.pool_slots,
    }  # fmt: skip
    from flexorch_provider.links import job_page_url

    row["view_url"] = job_page_url(ti.dag_id, ti.run_id, ti.task_id, map_index)
    if record is None:
        waiting = {"scheduled": "scheduled in Airflow", "queued": "queued in Airflow"}.get(str(ti.state))
        if waiting is None:
            waiting = "waiting for the steps it comes after" if ti.operator == "SubmittedStepOperator" else "starting"
        if ti.pool and ti.pool.startswith("gpu-") and ti.state in ("scheduled", "queued"):
            waiting += f" (needs {ti.pool_slots} slots of pool {ti.pool})"
        row.update(target=None, job_id=None, state="pending", reason=waiting, where=None, gpus=None, team=None,
                   owner=None, gpu_pool=None, elapsed_s=None)  # fmt: skip
        return row
    started = record.submitted_at
    ended = (
        getattr(ti, "end_date", None) if str(ti.state) not in ("running", "deferred", "queued", "scheduled") else None
    )
    until = ended.timestamp() if ended is not None else now  # an ended task's job stops counting
    row.update(
        target=record.target,
        job_id=record.job_id,
        name=record.name or None,
        where=record.where,
        gpus=record.gpus,
        gpu_pool=record.gpu_pool,
        team=record.team,
        owner=record.owner,
        choice=record.choice.summary() if record.choice else None,
        restarts=record.restarts,
        restart_cause=record.restart_cause,
        elapsed_s=round(until - started, 1) if started is not None else None,
    )
    return row


def _with_status(rows: list[dict[str, Any]], handles: dict[str, Any]) -> None:
    statuses = _statuses(list(handles.values()))
    for row in rows:
        h = handles.get(row.get("run_key") or "")
        if h is None:
            continue
        status, reading = statuses.get(h.run_key, (None, {"error": "not polled"}))
        row["reading"] = reading
        if status is None:
            row.update(state="unknown", reason=reading.get("error") or reading.get("slow") or "no answer yet")
        else:
            row.update(state=status["state"], reason=status.get("message", ""), exit_code=status.get("exit_code"))


def jobs(
    dag_ids: Collection[str] | None,
    target: str | None = None,
    pool: str | None = None,
    team: str | None = None,
) -> list[dict[str, Any]]:
    """Flex jobs pending or running, of the DAGs in ``dag_ids`` (None: all)."""
    from airflow.utils.session import create_session

    now = time.time()
    with create_session() as session:
        tis = _tis(session, dag_ids)
        xcoms = _job_xcoms(session, tis)
    rows, handles = [], {}
    service_dags = _service_dag_ids()
    for ti in tis:
        key = (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        if (key in xcoms and xcoms[key] is None) or ti.dag_id in service_dags:
            continue  # a service's deploy, reconcile or watch task (also queued, before it marks itself)
        record = xcoms.get(key)
        row = _job_row(ti, record, now)
        h = record.job if record else None
        if h is not None:
            row["run_key"] = h.run_key
            handles[h.run_key] = h
        if target and row.get("target") != target:
            continue
        if pool and pool not in (row.get("gpu_pool"), (row.get("pool") or "").removeprefix("gpu-")):
            continue
        if team and row.get("team") != team:
            continue
        rows.append(row)
    _with_status(rows, {k: v for k, v in handles.items() if any(r.get("run_key") == k for r in rows)})
    return rows


def job(
    dag_id: str, run_id: str, task_id: str, map_index: int, dag_ids: Collection[str] | None
) -> dict[str, Any] | None:
    """One flex task's job, live or ended, with its last log lines (masked); None if no such task."""
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = _tis(
            session, dag_ids, live_only=False, dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index
        )
        xcoms = _job_xcoms(session, tis)
    if not tis:
        return None
    ti = tis[0]
    record = xcoms.get((ti.dag_id, ti.run_id, ti.task_id, ti.map_index))
    row = _job_row(ti, record, time.time())
    h = record.job if record else None
    if h is None:
        return row
    row["run_key"] = h.run_key
    if ti.state in LIVE_TI_STATES:
        _with_status([row], {h.run_key: h})
    else:
        row.update(state=f"ended ({ti.state} in Airflow)", reason="")
    row["log_tail"], row["log_error"] = _log_tail(h)
    return row


def _log_tail(h: Any) -> tuple[list[str], str | None]:
    from flexorch_provider.backends.registry import get_backend
    from flexorch_provider.masking import masker_for

    def fetch() -> list[str]:
        backend = get_backend(h.target)
        lines: list[str] = []
        cursor: Any = 0
        for _ in range(64):  # up to 64 MiB of log: the last lines are what the page shows
            chunk = backend.read_logs(h, cursor)
            lines = (lines + chunk.lines)[-LOG_TAIL:]
            if chunk.cursor == cursor or not chunk.lines:
                break
            cursor = chunk.cursor
        mask = masker_for(h.secret_refs)
        return [mask(line) for line in lines]

    r = SHARED.get(f"log:{h.run_key}:{h.job_id}", fetch, ttl=5.0)
    return list(r.value or []), r.error or r.public().get("slow")


# --- services ------------------------------------------------------------------------------------
def _service_jobs(dag_ids: Collection[str] | None) -> list[tuple[str, Any]]:
    """(DAG id, workload) of every service in the specs folder (service specs and service steps)."""
    from flexorch_provider.dag_factory.folder import load_entries
    from flexorch_provider.resolve import load_workload
    from flexorch_provider.spec.models import PipelineSpec, ServiceSpec

    entries, _ = load_entries(specs_dir())
    out = []
    for entry in entries.values():
        spec = entry.spec
        if spec is None or (dag_ids is not None and spec.name not in dag_ids):
            continue
        if isinstance(spec, ServiceSpec):
            out.append((spec.name, load_workload(spec)))
        elif isinstance(spec, PipelineSpec):
            out += [(spec.name, load_workload(spec, step=s.name)) for s in spec.steps if s.kind == "service"]
    return sorted(out, key=lambda item: item[1].name)


def _service_dag_ids() -> set[str]:
    """The DAGs the specs folder makes of its service specs (deploy, reconcile, watch): their tasks
    are services, shown in the services list, never jobs."""
    from flexorch_provider.dag_factory.folder import load_entries
    from flexorch_provider.dag_factory.plan import plan_dags
    from flexorch_provider.spec.models import ServiceSpec

    try:
        entries, _ = load_entries(specs_dir())
    except Exception:
        return set()
    return {
        p.dag_id for e in entries.values() if isinstance(e.spec, ServiceSpec) for p in plan_dags(e.spec, e.spec.name)
    }


def _resolved(workload: Any) -> Any:
    from flexorch_provider.backends.base import ResolvedJob

    # secrets are not read here: the replicas' own state says their revision
    return ResolvedJob.for_run(workload, f"service/{workload.name}")


def _landed_on(workload: Any) -> str:
    """The target a service runs on: where its deploy landed (its state says), else its first."""
    from flexorch_provider.services.state import ServiceState

    return ServiceState.load(workload.name).landed_on(workload)


def _service_reading(workload: Any) -> Reading:
    from flexorch_provider.backends.registry import get_backend

    target = _landed_on(workload)
    return SHARED.get(
        f"service:{target}:{workload.name}", lambda: get_backend(target).service_status(_resolved(workload))
    )


def services(dag_ids: Collection[str] | None, target: str | None = None) -> list[dict[str, Any]]:
    from flexorch_provider.links import service_page_url

    chosen = [(d, w) for d, w in _service_jobs(dag_ids) if target in (None, "", _landed_on(w))]

    def read(item: tuple[str, Any]) -> dict[str, Any]:
        from flexorch_provider.services.state import ServiceState

        dag_id, w = item
        state = ServiceState.load(w.name)  # undeployed: nothing is desired (not its spec's replicas)
        if state.deployed:
            r = _service_reading(w)
            value, reading = r.value or {}, r.public()
        else:  # its target is not asked: nothing of it runs there (and its DAG may wait for a connection)
            value, reading = {}, {"age_s": None, "note": "not deployed: its target is not read"}
        desired = len(state.current_slots(w)) if state.deployed else 0
        return {"service": w.name, "dag_id": dag_id, "target": _landed_on(w), "desired": desired,
                "deployed": state.deployed,
                "running": value.get("running"), "healthy": value.get("healthy"),
                "revisions": value.get("revisions", []), "replicas": value.get("replicas", []),
                "unreachable": value.get("unreachable", {}), "reading": reading,
                "view_url": service_page_url(w.name)}  # fmt: skip

    return [row for _, row, _ in parallel(chosen, read) if row is not None]


def service(name: str, dag_ids: Collection[str] | None) -> tuple[str, Any] | None:
    return next(((d, w) for d, w in _service_jobs(dag_ids) if w.name == name), None)


def service_logs(workload: Any, slot: int | None, cursors: dict[str, int] | None, tail: int) -> dict[str, Any]:
    """Replica log lines, masked with the service's secrets where this process can read them
    (the runner masks them already as it writes the log)."""
    from flexorch_provider.backends.registry import get_backend
    from flexorch_provider.masking import masker_for, secret_refs

    out = get_backend(_landed_on(workload)).service_logs(_resolved(workload), slot, cursors, tail)
    try:
        mask = masker_for(secret_refs(workload))
    except Exception as e:
        out["mask_note"] = (
            f"the service's secrets could not be read here ({reason(e)}): lines as the runner masked them"
        )
        return out
    for r in out["replicas"]:
        r["lines"] = [mask(line) for line in r.get("lines", [])]
    return out
