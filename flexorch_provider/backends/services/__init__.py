"""Services on plain hosts (``ssh``, ``local``): keep N healthy replicas of one revision.

There is one operation, :func:`converge`: look at what runs on every host, compare it with
the spec, and change the fewest replicas needed. ``deploy`` and ``reconcile`` are both a
converge (so a deploy that dies half way is finished by the next run or by reconcile);
``undeploy`` converges to zero. Desired state is the spec: a spec edited in the folder
reaches the hosts at the next deploy or reconcile run, through the same health gates.

A replica is a job of the shared job runner under ``<services>/<service>/<slot>-<revision>``
on its host; its job.json records slot and revision, so the hosts themselves are the
record of what is deployed — there is no second copy of the state to drift. Restarting a
dead replica of the same revision in place is a new attempt of the same run key.

Order of work: retire dead replicas (keeping their logs under ``.retired/``), extra
replicas and duplicates; restart replicas that stay unhealthy past the grace; fill empty
slots; then replace old revisions one slot at a time — start the new replica (on a free
host when the port allows a surge), wait until it is healthy, only then stop the old one.
A new replica that never gets healthy stops the rollout with its log tail; the replicas
not yet replaced keep serving.

Modules: ``state.py`` (the fleet, the replicas found, the desired state from the spec),
``converge.py`` (the converge itself), ``render.py`` (what ``flexorch render`` shows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.services.converge import Converger
from flexorch_provider.backends.services.render import render_service
from flexorch_provider.backends.services.state import Desired, Fleet, H, Replica, desired_state, service_slug

__all__ = [
    "Converger",
    "Desired",
    "Fleet",
    "FleetServices",
    "Replica",
    "desired_state",
    "render_service",
    "run_service",
    "service_slug",
]


class FleetServices:
    """The service half of a backend whose services run on plain hosts (ssh, local): each says how
    to reach its hosts (``_fleet``); converge, status and logs are the same on both."""

    def _fleet(self, job: ResolvedJob) -> Fleet[Any]:
        raise NotImplementedError

    def service(self, job: ResolvedJob, log: Callable[[str], None]) -> dict[str, Any]:
        return run_service(self._fleet(job), job, log)

    def service_status(self, job: ResolvedJob, metric: dict[str, Any] | None = None) -> dict[str, Any]:
        from flexorch_provider.backends.services.view import describe

        return describe(self._fleet(job), job, metric)

    def service_logs(
        self, job: ResolvedJob, slot: int | None = None, cursors: dict[str, int] | None = None, tail: int = 50
    ) -> dict[str, Any]:
        from flexorch_provider.backends.services.view import replica_logs

        return replica_logs(self._fleet(job), job, slot, cursors, tail)


def run_service(fleet: Fleet[H], job: ResolvedJob, log: Callable[[str], None]) -> dict[str, Any]:
    """deploy | reconcile → converge; undeploy → stop every replica."""
    converger = Converger(fleet, desired_state(job, fleet.root), log)
    if job.action == "undeploy":
        return converger.undeploy()
    return converger.converge()
