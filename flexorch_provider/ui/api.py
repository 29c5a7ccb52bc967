"""The flexorch app in the Airflow api-server, under ``/flexorch``. Every route needs a logged-in
Airflow user (a plugin's routes are anonymous unless the plugin checks: the app depends on
Airflow's own ``get_user``, so no token or ``_token`` cookie → 401), and jobs and services are
listed only for DAGs the user may read.

JSON (``/flexorch/api``):

- ``GET /api/overview?target=&pool=&team=``: pools, jobs and services at once (what the page shows)
- ``GET /api/pools?pool=``: each GPU pool per node: models, total/free GPUs, free memory, up/down and why
- ``GET /api/jobs?target=&pool=&team=``: flex jobs pending or running on every backend
- ``GET /api/jobs/{dag_id}/{run_id}/{task_id}?map_index=``: one job, with its last log lines
- ``GET /api/services?target=``: services: desired vs running/healthy replicas, revisions, hosts
- ``GET /api/services/{name}``: one service's replicas
- ``GET /api/services/{name}/logs?replica=&tail=&cursor=``: its replicas' recent log lines
  (``cursor``: the JSON object this returned as ``cursors``, to get only newer lines)
- ``GET /api/usage``: each team's GPU-hours and live runs (the policy's ledger)
- ``GET /api/me``: the user, their team, whether they are an admin, and their submit DAG
- ``HEAD /api/code/{digest}``, ``PUT /api/code/{digest}`` (a gzip'd tar): whether the code store has a
  bundle, and upload one (checked: its files must give its digest); only for users who may start
  a run of their submit DAG (``flexorch submit`` sends a spec's code this way)

A submitted job (a ``flexorch-submit[-<team>]`` DAG) belongs to the team that submitted it: a user who is
not an admin (one who may not change Variables) sees only their own team's submitted jobs, their
logs and their team's usage.

Each reading carries ``reading: {age_s, error?, slow?}``: how old it is, why it failed, or that
its source has not answered yet (the page shows it and goes on).

HTML: ``/flexorch/`` (the page), ``/flexorch/jobs/{dag_id}/{run_id}/{task_id}`` (one job),
``/flexorch/services/{name}`` (one service with its replicas' logs).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse

from flexorch_provider import code_store
from flexorch_provider.runner.code import CodeError
from flexorch_provider.ui import overview


@dataclass(frozen=True)
class Viewer:
    """Who asks: the Airflow user, the team the policy puts them in, and whether they operate the
    platform (may change Variables, so they can read every secret anyway): they see every team."""

    name: str | None
    team: str | None
    admin: bool
    has_teams: bool = False  # the policy has teams: each submits through its own DAG

    def sees(self, row: dict[str, Any]) -> bool:
        """A submitted job is its team's: another team's user does not see it (or its log)."""
        from flexorch_provider.submission import is_submit_dag

        return (
            self.admin
            or not is_submit_dag(row.get("dag_id"))
            or (self.team is not None and row.get("team") == self.team)
        )


def me(who: Viewer) -> dict[str, Any]:
    """The user as flexorch sees them, and the submit DAG ``flexorch submit`` uses for them: their
    team's when the policy has teams, else the one DAG."""
    from flexorch_provider.submission import submit_dag_id

    dag = submit_dag_id(who.team) if who.team or not who.has_teams else None  # None: in no team, may not submit
    return {"user": who.name, "team": who.team, "admin": who.admin, "submit_dag": dag}


def viewer(request: Request) -> Viewer:
    from airflow.api_fastapi.app import get_auth_manager

    from flexorch_provider.policy import load_policy, policy_file

    user = request.state.flexorch_user
    name = user.get_name() if hasattr(user, "get_name") else None
    admin = bool(get_auth_manager().is_authorized_variable(method="PUT", user=user))
    try:
        policy = load_policy(policy_file(overview.specs_dir()))
    except Exception:  # an invalid policy: nobody's team is known, admins still see all
        policy = None
    found = policy.team_of(name) if policy is not None else None
    return Viewer(name, found[0] if found else None, admin, bool(policy and policy.teams))


def run_task_states(dag_id: str, runs: list[str]) -> dict[str, dict[str, Any]]:
    """The states of the ``run`` tasks of ``runs`` (keys ``run_<map index>``), from Airflow's database
    (the api-server has it; tasks ask through the Task SDK instead)."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        rows = session.execute(
            select(TI.run_id, TI.map_index, TI.state).where(
                TI.dag_id == dag_id, TI.task_id == "run", TI.run_id.in_(runs)
            )
        )
        for run_id, index, state in rows:
            out.setdefault(run_id, {})["run" if index < 0 else f"run_{index}"] = state
    return out


def usage(now: float | None = None, who: Viewer | None = None, states_of: Any = run_task_states) -> dict[str, Any]:
    """Each team's GPU-hours and live runs; a user who is not an admin sees their own team only.
    Runs and jobs whose tasks have ended without recording it are recorded as ended first."""
    import logging

    from flexorch_provider.policy import Ledger, load_policy, period_start, policy_file
    from flexorch_provider.policy.admission import close_ended

    now = time.time() if now is None else now
    path = policy_file(overview.specs_dir())
    policy = load_policy(path)
    if policy is None:
        return {"policy": None, "teams": []}
    ledger = Ledger()
    teams = []
    for name, team in policy.teams.items():
        if who is not None and not who.admin and name != who.team:
            continue
        if states_of is not None:
            with ledger.locked():
                close_ended(ledger, name, now, states_of, logging.getLogger(__name__))
        per = team.gpu_hours.per if team.gpu_hours else "day"
        since = period_start(per, now)
        teams.append(
            {
                "team": name,
                "members": team.members,
                "gpu_hours": {
                    "used": round(ledger.gpu_hours(name, since, now), 4),
                    "limit": team.gpu_hours.limit if team.gpu_hours else None,
                    "per": per,
                    "since": since,
                },
                "live_runs": len(ledger.live_runs(name, now)),
                "max_concurrent": team.max_concurrent,
            }
        )
    return {"policy": str(path), "teams": teams}


def map_index_of(value: str | None) -> int:
    """A task's map index from a query: the UI's task tab leaves ``{MAP_INDEX}`` unfilled for an
    unmapped task, which means -1 (as does no value)."""
    text = (value or "").strip()
    return int(text) if text.lstrip("-").isdigit() else -1


def readable_dags(request: Request) -> Collection[str]:
    """The DAG ids the logged-in user may read (the auth manager decides)."""
    from airflow.api_fastapi.app import get_auth_manager

    user = request.state.flexorch_user
    return get_auth_manager().get_authorized_dag_ids(user=user, method="GET")


def may_upload(request: Request) -> None:
    """Only who may start a run of a submit DAG (their team's) may upload code for one (403 otherwise)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    dag = me(viewer(request))["submit_dag"]
    user = request.state.flexorch_user
    allowed = dag is not None and get_auth_manager().is_authorized_dag(
        method="POST", user=user, access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag)
    )
    if not allowed:
        raise HTTPException(403, "you may not submit jobs here (no run of a flexorch-submit DAG): no code upload")


def create_app() -> FastAPI:
    from airflow.api_fastapi.core_api.security import get_user

    # a plain default: with postponed annotations FastAPI cannot see a local name inside Annotated
    async def logged_in(request: Request, user: Any = Depends(get_user)) -> Any:  # noqa: B008
        request.state.flexorch_user = user
        return user

    # no schema route either: every route of this app needs a login, and so does the list of them
    app = FastAPI(title="flexorch", dependencies=[Depends(logged_in)], docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/api/me")
    def _me(request: Request) -> dict[str, Any]:
        return me(viewer(request))

    @app.get("/api/usage")
    def _usage(request: Request) -> dict[str, Any]:
        return usage(who=viewer(request))

    @app.get("/api/pools")
    def _pools(pool: str | None = None) -> dict[str, Any]:
        return overview.pools(pool)

    @app.get("/api/jobs")
    def _jobs(
        request: Request, target: str | None = None, pool: str | None = None, team: str | None = None
    ) -> dict[str, Any]:
        who = viewer(request)
        return {"jobs": [r for r in overview.jobs(readable_dags(request), target, pool, team) if who.sees(r)]}

    @app.get("/api/jobs/{dag_id}/{run_id}/{task_id}")
    def _job(request: Request, dag_id: str, run_id: str, task_id: str, map_index: str | None = None) -> dict[str, Any]:
        index = map_index_of(map_index)
        found = overview.job(dag_id, run_id, task_id, index, readable_dags(request))
        if found is None or not viewer(request).sees(found):
            raise HTTPException(404, f"no flexorch task {dag_id}/{run_id}/{task_id} (map index {index}) you may read")
        return found

    @app.get("/api/services")
    def _services(request: Request, target: str | None = None) -> dict[str, Any]:
        return {"services": overview.services(readable_dags(request), target)}

    def _service_or_404(request: Request, name: str) -> tuple[str, Any]:
        found = overview.service(name, readable_dags(request))
        if found is None:
            raise HTTPException(404, f"no service {name!r} in the specs folder that you may read")
        return found

    @app.get("/api/services/{name}")
    def _service(request: Request, name: str) -> dict[str, Any]:
        dag_id, _ = _service_or_404(request, name)
        return next(r for r in overview.services({dag_id}) if r["service"] == name)

    @app.get("/api/services/{name}/logs")
    def _service_logs(
        request: Request,
        name: str,
        replica: int | None = None,
        tail: int = Query(50, ge=0, le=5000),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        _, workload = _service_or_404(request, name)
        try:
            cursors = {str(k): int(v) for k, v in json.loads(cursor).items()} if cursor else None
        except (ValueError, TypeError, AttributeError):
            raise HTTPException(422, "cursor must be the JSON object a previous answer gave as 'cursors'") from None
        try:
            out = overview.service_logs(workload, replica, cursors, tail)
        except Exception as e:
            raise HTTPException(502, f"cannot read the logs of service {name}: {overview.reason(e)}") from None
        out["cursors"] = {r["run_dir"]: r["cursor"] for r in out["replicas"] if r.get("cursor") is not None}
        return out

    @app.get("/api/overview")
    def _overview(
        request: Request, target: str | None = None, pool: str | None = None, team: str | None = None
    ) -> dict[str, Any]:
        dags = readable_dags(request)
        who = viewer(request)
        parts = {
            "pools": lambda: overview.pools(pool),
            "jobs": lambda: [r for r in overview.jobs(dags, target, pool, team) if who.sees(r)],
            "services": lambda: overview.services(dags, target),
        }
        out: dict[str, Any] = {"generated_at": time.time()}
        for key, value, error in overview.parallel(list(parts), lambda k: parts[k]()):
            out[key] = value if error is None else {"error": overview.reason(error)}
        return out

    @app.head("/api/code/{digest}")
    def _code_has(request: Request, digest: str) -> Response:
        may_upload(request)
        try:
            found = code_store.has(digest)
        except CodeError as e:
            raise HTTPException(422, str(e)) from None
        return Response(status_code=200 if found else 404)

    @app.put("/api/code/{digest}")
    async def _code_put(request: Request, digest: str) -> dict[str, Any]:
        may_upload(request)
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as body:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > code_store.MAX_UPLOAD_BYTES:
                    raise HTTPException(413, f"a code bundle may be {code_store.MAX_UPLOAD_BYTES} bytes at most")
                body.write(chunk)
            body.seek(0)
            try:
                return await asyncio.to_thread(code_store.put, digest, body)
            except CodeError as e:
                raise HTTPException(422, f"code bundle refused: {e}") from None

    from flexorch_provider.ui.page import PAGE

    @app.get("/", response_class=HTMLResponse)
    @app.get("/jobs/{dag_id}/{run_id}/{task_id}", response_class=HTMLResponse)
    @app.get("/services/{name}", response_class=HTMLResponse)
    def _page() -> str:
        return PAGE

    return app
