"""The Airflow REST API as ``flexorch submit/logs/status/cancel`` use it: a login (a JWT from
``/auth/token``, renewed when it expires if the password is at hand) and a handful of calls.
Every failure is one :class:`ClientError` line: a wrong password, an unreachable server, a
missing permission, a run that does not exist."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from flexorch_provider.exceptions import ClientError
from flexorch_provider.submission import SUBMIT_DAG_ID

UPLOAD_FLOOR_BPS = 256 * 1024  # an upload may take as long as this slow a link needs
TIMEOUT_S = 60


@dataclass
class Login:
    url: str
    user: str | None = None
    password: str | None = None
    token: str | None = None


class Api:
    """One server, one user, one submit DAG (``dag_id``; default: the user's team's). ``on_token`` is
    told each new token (``flexorch login`` saves it)."""

    def __init__(self, login: Login, on_token: Any = None, dag_id: str | None = None) -> None:
        self.login = login
        self.base = login.url.rstrip("/")
        self.on_token = on_token
        self.renewed = 0
        self._dag_id = dag_id  # the submit DAG; None: the user's team's, as the server says

    @property
    def dag_id(self) -> str:
        """The submit DAG of this user (their team's), as the server's flexorch app says."""
        if self._dag_id is None:
            try:
                me = self.call("GET", "/flexorch/api/me")
            except ClientError as e:
                if e.status != 404:
                    raise
                me = {"submit_dag": SUBMIT_DAG_ID}  # a server without the flexorch app: the one DAG
            dag = (me or {}).get("submit_dag") if isinstance(me, dict) else None
            if not dag:
                raise ClientError(
                    f"user {self.login.user!r} is in no team of the policy on {self.base}, so has no submit DAG: "
                    "ask the platform team to add you to a team (flexorch_policy.yaml)"
                )
            self._dag_id = str(dag)
        return self._dag_id

    # --- auth ----------------------------------------------------------------------------
    def authenticate(self) -> str:
        if not self.login.user or self.login.password is None:
            raise ClientError(
                f"no login for {self.base}: run `flexorch login`, or set FLEXORCH_USER and FLEXORCH_PASSWORD "
                "(or FLEXORCH_TOKEN)"
            )
        body = {"username": self.login.user, "password": self.login.password}
        try:
            data = self._send("POST", "/auth/token", body, auth=False)
        except ClientError as e:
            if e.status in (400, 401, 403, 422):
                raise ClientError(
                    f"{self.base} refused the login of {self.login.user!r}: wrong user or password", status=e.status
                ) from None
            raise
        token = str((data or {}).get("access_token") or "")
        if not token:
            raise ClientError(f"{self.base}/auth/token answered without a token")
        self.login.token = token
        if self.on_token:
            self.on_token(token)
        return token

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        """A REST call with the login; an expired token is renewed once (when the password is known)."""
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        if not self.login.token:
            self.authenticate()
        try:
            return self._send(method, path, body)
        except ClientError as e:
            if e.status != 401:
                raise
            if self.login.password is None:
                raise ClientError(
                    f"the login token for {self.base} is no longer valid ({e.detail or 'expired'}): "
                    "run `flexorch login` again",
                    status=401,
                ) from None
            self.renewed += 1
            self.authenticate()
            return self._send(method, path, body)

    # --- transport -------------------------------------------------------------------------
    def _send(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        """``body``: JSON, or bytes sent as they are (a code bundle)."""
        raw_body = isinstance(body, bytes)
        data = body if raw_body else json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/gzip" if raw_body else "application/json")
        if auth and self.login.token:
            req.add_header("Authorization", f"Bearer {self.login.token}")
        timeout = TIMEOUT_S if not raw_body else max(TIMEOUT_S, len(data or b"") / UPLOAD_FLOOR_BPS)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _detail(e)
            what = {401: "not logged in", 403: "permission denied", 404: "not found"}.get(e.code, f"HTTP {e.code}")
            raise ClientError(
                f"{method} {path.split('?')[0]}: {what}: {detail}", status=e.code, detail=detail
            ) from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", e)
            raise ClientError(f"cannot reach the Airflow API at {self.base}: {why}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    # --- the calls flexorch makes -----------------------------------------------------------
    def runs_path(self, run_id: str | None = None) -> str:
        base = f"/api/v2/dags/{urllib.parse.quote(self.dag_id, safe='')}/dagRuns"
        return base if run_id is None else f"{base}/{urllib.parse.quote(run_id, safe='')}"

    def trigger(self, run_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("POST", self.runs_path(), {"dag_run_id": run_id, "logical_date": None, "conf": conf}))

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", self.runs_path(run_id)))

    def runs(self, limit: int = 100) -> list[dict[str, Any]]:
        data = self.call("GET", self.runs_path(), query={"order_by": "-run_after", "limit": limit})
        return list((data or {}).get("dag_runs", []))

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        data = self.call("GET", self.runs_path(run_id) + "/taskInstances", query={"limit": 1000})
        return list((data or {}).get("task_instances", []))

    def log(self, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> list[dict[str, Any]]:
        """One try's log as Airflow's records (``timestamp``, ``event``)."""
        path = f"{self.runs_path(run_id)}/taskInstances/{task_id}/logs/{try_number}"
        data = self.call("GET", path, query={"full_content": "true", "map_index": map_index})
        content = data.get("content", "") if isinstance(data, dict) else data
        if isinstance(content, list):
            return [c if isinstance(c, dict) else {"event": str(c)} for c in content]
        return [{"event": line} for line in str(content or "").splitlines()]

    def xcom(self, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
        path = f"{self.runs_path(run_id)}/taskInstances/{task_id}/xcomEntries/{key}"
        try:
            data = self.call("GET", path, query={"map_index": map_index, "deserialize": "true"})
        except ClientError as e:
            if e.status == 404:
                return None
            raise
        return (data or {}).get("value")

    def fail_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.call("PATCH", self.runs_path(run_id), {"state": "failed"}))

    def flexorch(self, path: str, query: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET ``/flexorch/api/<path>`` (the flexorch plugin of the api-server)."""
        try:
            return dict(self.call("GET", f"/flexorch/api/{path}", query=query))
        except ClientError as e:
            if e.status == 404 and "flexorch" not in str(e).lower():
                raise ClientError(
                    f"{self.base} has no /flexorch/api: install flexorch-provider in its api-server "
                    "(the plugin comes with it) and restart it",
                    status=404,
                ) from None
            raise

    def usage(self) -> dict[str, Any]:
        """Each team's GPU-hours and live runs."""
        return self.flexorch("usage")

    def service_logs(self, name: str, replica: int | None, tail: int, cursors: dict[str, int] | None) -> dict[str, Any]:
        """A service's replicas' recent log lines (after ``cursors``, as the last answer gave them)."""
        from urllib.parse import quote

        query: dict[str, Any] = {"tail": tail}
        if replica is not None:
            query["replica"] = replica
        if cursors is not None:
            query["cursor"] = json.dumps(cursors)
        return self.flexorch(f"services/{quote(name, safe='')}/logs", query)

    def code_has(self, digest: str) -> bool:
        """Whether the server's code store has the bundle ``digest``."""
        try:
            self.call("HEAD", f"/flexorch/api/code/{digest}")
        except ClientError as e:
            if e.status == 404:
                return False
            raise
        return True

    def code_put(self, digest: str, data: bytes) -> dict[str, Any]:
        """Upload a code bundle (the server checks that its files give ``digest``)."""
        return dict(self.call("PUT", f"/flexorch/api/code/{digest}", data))

    def dag(self) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v2/dags/{urllib.parse.quote(self.dag_id, safe='')}"))


def _detail(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read() or b"{}")
    except ValueError:
        return e.reason or ""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's validation errors
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail or e.reason or "")
