"""What a service task does: deploy, reconcile or undeploy (a converge on its target), and apply one
watcher change. The service operator (and a submitted service step) calls these; the state they
write is :class:`~flexorch_provider.services.state.ServiceState`.

A service runs on the first target of its list that accepts it, and its state records which one:
a later reconcile, undeploy or watcher asks that target first, and the page shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flexorch_provider import links
from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.registry import get_backend
from flexorch_provider.links import ServiceLink
from flexorch_provider.placement.placer import Log, first_that_accepts
from flexorch_provider.services.state import ServiceState, changing
from flexorch_provider.services.watch import Change

MARK_KEY = "service"  # the XCom that marks a task as a service's (the flexorch page lists it as one)
HISTORY_SHOWN = 20


def slots_for(w: Any, slots: list[int] | None = None) -> list[int] | None:
    """The replica slots a converge of service ``w`` runs: ``slots`` when given, else what its state
    says now; None for a service that is not autoscaled (its ``replicas``, 0..n-1)."""
    if w.autoscale is None:
        return None
    return slots if slots is not None else ServiceState.load(w.name).current_slots(w)


def order(w: Any) -> list[str]:
    """The targets to try: where the service landed first, then the rest of its list."""
    landed = ServiceState.load(w.name).landed_on(w)
    return [landed, *(str(t) for t in w.target if t != landed)]


def connection_of(w: Any, target: str) -> str | None:
    """The Airflow connection a workload runs through on ``target`` (its link template may be there)."""
    conn = getattr(getattr(w, target, None), "connection", None)
    return conn if isinstance(conn, str) else None


def announce(w: Any, action: str, ti: Any) -> list[str]:
    """Mark the task as the service's (the flexorch page lists it as one) and push its "Service" link
    while it converges or watches, not only after; the targets to try, in order."""
    targets = order(w)
    links.push(ti, ServiceLink, links.service_url(ti, w.name, targets[0], connection_of(w, targets[0])))
    ti.xcom_push(key=MARK_KEY, value={"service": w.name, "action": action})
    return targets


def converge(job: ResolvedJob, ti: Any, log: Log) -> dict[str, Any]:
    """Bring the service to ``job.action`` (deploy, reconcile, undeploy) on its target: a summary for
    XCom. Idempotent: a retry or a restarted worker just converges again."""
    w = job.service
    targets = announce(w, str(job.action), ti)
    log.info("service %s: %s", job.name, job.action)
    if job.action == "reconcile":
        return _reconcile(job, targets, ti, log)
    if job.action == "undeploy":
        summary = stop(job, log)
        target = summary["target"]
    else:
        target, summary = first_that_accepts(targets, lambda backend: backend.service(job, _lines(log)), log)
        _mark(job, deployed=True, target=target)
    if target != targets[0]:
        links.push(ti, ServiceLink, links.service_url(ti, w.name, target, connection_of(w, target)))
    return {**summary, "target": target, "action": job.action}


def _reconcile(job: ResolvedJob, targets: list[str], ti: Any, log: Log) -> dict[str, Any]:
    """Bring a deployed service back to what its deploy decided, under its lock (an undeploy that
    comes meanwhile waits, then wins); a service nobody deployed, or one undeployed, is left down."""
    w = job.service
    with changing(job.name) as state:
        if not state.deployed:
            log.info(
                "service %s is not deployed (never deployed here, or undeployed since): nothing to reconcile; "
                "run its DAG (action deploy) to start it",
                w.name,
            )
            return {"service": w.name, "target": None, "action": "reconcile", "deployed": False}
        target, summary = first_that_accepts(targets, lambda backend: backend.service(job, _lines(log)), log)
        state.mark(True, job.slots, target)
    if target != targets[0]:
        links.push(ti, ServiceLink, links.service_url(ti, w.name, target, connection_of(w, target)))
    return {**summary, "target": target, "action": "reconcile"}


def stop(job: ResolvedJob, log: Log) -> dict[str, Any]:
    """Undeploy a service (also where no task instance is at hand: a killed task's trigger): unmark
    it first, so the watcher does not restore what is being stopped, then stop its replicas on the
    target that takes the undeploy."""
    _mark(job, deployed=False, target=None)
    target, summary = first_that_accepts(order(job.service), lambda b: b.service(job, _lines(log)), log)
    return {**summary, "target": target, "action": "undeploy"}


def _mark(job: ResolvedJob, deployed: bool, target: str | None) -> None:
    with changing(job.name) as state:
        state.mark(deployed, job.slots, target)


def apply_change(
    w: Any, event: dict[str, Any], now: float, resolve: Callable[[list[int]], ResolvedJob], log: Log
) -> dict[str, Any]:
    """One watcher event: restore the replicas that need it and take an autoscale step, in one
    converge on the service's target. ``resolve``: the service resolved for a reconcile of slots."""
    with changing(w.name) as state:  # an undeploy meanwhile waits, then wins: never restored after it
        if not state.deployed:
            log.info("service %s was undeployed meanwhile: nothing to restore or scale", w.name)
            return {"service": w.name, "action": "watch", "changes": [], "history": state.history[-HISTORY_SHOWN:]}
        change = Change.of(w, state, event, now)
        for line in change.lines():
            log.info("%s", line)
        target = state.landed_on(w)
        try:
            summary = get_backend(target).service(resolve(change.slots), _lines(log))
        finally:
            state.note(change.history_entry())
    return {**summary, "target": target, "action": "watch", "history": state.history[-HISTORY_SHOWN:]}


def _lines(log: Log) -> Callable[[str], None]:
    return lambda line: log.info("%s", line)
