"""The JSON API under ``/flexorch/api`` in the Airflow api-server. Every route needs a logged-in
Airflow user (a plugin's routes are anonymous unless the plugin checks: the app depends on
Airflow's own ``get_user``, so no token → 401).

- ``GET /flexorch/api/usage``: each team of the policy, its GPU-hours this period (from the
  ledger of submitted jobs, running jobs included) and its live runs, against its limits.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI


def _specs_dir() -> Path:
    from airflow.configuration import conf

    dags = Path(conf.get("core", "dags_folder"))
    configured = os.environ.get("FLEXORCH_SPECS_DIR")
    return (dags / configured).resolve() if configured else dags / "specs"


def usage(now: float | None = None) -> dict[str, Any]:
    from flexorch_provider.policy import Ledger, load_policy, period_start, policy_file

    now = time.time() if now is None else now
    path = policy_file(_specs_dir())
    policy = load_policy(path)
    if policy is None:
        return {"policy": None, "teams": []}
    ledger = Ledger()
    teams = []
    for name, team in policy.teams.items():
        per = team.gpu_hours.per if team.gpu_hours else "day"
        since = period_start(per, now)
        teams.append({
            "team": name, "members": team.members,
            "gpu_hours": {"used": round(ledger.gpu_hours(name, since, now), 4),
                          "limit": team.gpu_hours.limit if team.gpu_hours else None, "per": per, "since": since},
            "live_runs": len(ledger.live_runs(name, now)), "max_concurrent": team.max_concurrent,
        })  # fmt: skip
    return {"policy": str(path), "teams": teams}


def create_app() -> FastAPI:
    from airflow.api_fastapi.core_api.security import get_user

    app = FastAPI(title="flexorch", dependencies=[Depends(get_user)])

    @app.get("/api/usage")
    def _usage() -> dict[str, Any]:
        return usage()

    return app
