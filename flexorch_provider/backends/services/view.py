"""What a service on plain hosts looks like now, and its replicas' recent log lines: read only,
nothing converges (the flexorch page and ``flexorch logs --service``)."""

from __future__ import annotations

import json
from typing import Any

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.services.converge import Converger
from flexorch_provider.backends.services.state import Fleet, H, Replica, desired_state
from flexorch_provider.fanout import parallel, reason

TAIL = 50


def _observer(fleet: Fleet[H], job: ResolvedJob) -> Converger[H]:
    return Converger(fleet, desired_state(job, fleet.root), log=lambda _line: None)


def loads(fleet: Fleet[H], replicas: list[Replica[H]], metric: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """run_dir → {value} or {error}: each replica's load, read on its host (autoscale http/command)."""
    by_host: dict[str, list[Replica[H]]] = {}
    for r in replicas:
        by_host.setdefault(fleet.label(r.host), []).append(r)
    spec = json.dumps(metric)

    def read(label: str) -> list[dict[str, Any]]:
        group = by_host[label]
        out = fleet.call(group[0].host, ["metric", spec, *(r.run_dir for r in group)], None)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    found: dict[str, dict[str, Any]] = {}
    for label, rows, error in parallel(list(by_host), read):
        if error is not None:
            found.update({r.run_dir: {"error": reason(error)} for r in by_host[label]})
            continue
        found.update({row["run_dir"]: row for row in rows})
    return found


def describe(fleet: Fleet[H], job: ResolvedJob, metric: dict[str, Any] | None = None) -> dict[str, Any]:
    """Desired vs running replicas, each replica's host, revision, state and health (and its load,
    when ``metric`` says how to read it)."""
    observer = _observer(fleet, job)
    found, unreachable = observer.observe()
    live = [r for r in found if r.live]
    checks = observer.health(live) if live else {}
    load = loads(fleet, live, metric) if metric and live else {}
    replicas = []
    for r in sorted(live, key=lambda r: (r.slot, r.age)):
        row = checks.get(r.run_dir, {})
        replicas.append(
            {
                "slot": r.slot,
                "host": fleet.label(r.host),
                "run_dir": r.run_dir,
                "revision": r.revision,
                "state": r.state,
                "age_s": round(r.age, 1),
                "healthy": bool(row.get("healthy")),
                "detail": str(row.get("detail") or r.message or ""),
            }
        )
        if metric:
            replicas[-1]["load"] = load.get(r.run_dir, {"error": "not read"})
    return {
        "service": job.name,
        "desired": observer.want.replicas,
        "slots": observer.want.slots,
        "running": len({r["slot"] for r in replicas}),
        "healthy": len({r["slot"] for r in replicas if r["healthy"]}),
        "revisions": sorted({r["revision"] for r in replicas}),
        "replicas": replicas,
        "unreachable": unreachable,
    }


def replica_logs(
    fleet: Fleet[H], job: ResolvedJob, slot: int | None = None, cursors: dict[str, int] | None = None, tail: int = TAIL
) -> dict[str, Any]:
    """Each live replica's log lines (or one slot's): the last ``tail`` lines, or those after its
    cursor in ``cursors`` (run directory → byte offset, as this returned last time)."""
    observer = _observer(fleet, job)
    found, unreachable = observer.observe()
    chosen = [r for r in found if r.live and (slot is None or r.slot == slot)]
    cursors = cursors or {}

    def read(r: Replica[H]) -> dict[str, Any]:
        at = cursors.get(r.run_dir)
        args = ["tail", r.run_dir, str(tail)] if at is None else ["log", r.run_dir, str(int(at))]
        out: dict[str, Any] = json.loads(fleet.call(r.host, args, None).strip().splitlines()[0])
        return out

    replicas = []
    for r, out, error in parallel(sorted(chosen, key=lambda r: r.slot), read):
        row: dict[str, Any] = {
            "slot": r.slot,
            "host": fleet.label(r.host),
            "run_dir": r.run_dir,
            "revision": r.revision,
            "state": r.state,
        }
        if error is not None:
            row.update(lines=[], cursor=cursors.get(r.run_dir), error=reason(error))
        else:
            row.update(lines=list(out.get("lines", [])), cursor=out.get("cursor"))
        replicas.append(row)
    return {"service": job.name, "replicas": replicas, "unreachable": unreachable}
