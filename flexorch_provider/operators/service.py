"""FlexServiceOperator: one action on a flexorch service — deploy, undeploy, reconcile or watch.

::

    FlexServiceOperator(task_id="deploy", spec="specs/chat-api.yaml")                     # deploy
    FlexServiceOperator(task_id="stop", spec="specs/chat-api.yaml", action="undeploy")
    FlexServiceOperator(task_id="watch", spec="specs/chat-api.yaml", action="watch")       # the -watch DAG

deploy, reconcile and undeploy converge in the worker (idempotent: a retry converges again);
watch defers to :class:`~flexorch_provider.triggers.service_watch.ServiceWatchTrigger`, which
fires only when a replica must be restored or the service scaled, and ``watch_complete`` makes
that change. What the service is (deployed, where, which slots) is kept by
:mod:`flexorch_provider.services`; this class is the glue to Airflow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flexorch_provider.backends.base import ResolvedJob, check_action
from flexorch_provider.exceptions import ConfigurationError
from flexorch_provider.links import ServiceLink
from flexorch_provider.operators.base import SpecOperator
from flexorch_provider.services import actions
from flexorch_provider.spec.models import ServiceSpec, ServiceStep
from flexorch_provider.triggers.service_watch import ServiceWatchTrigger

RESUME_HOLD_S = 10.0  # a deferred task resumes no sooner than this after deferring (see FlexJobTrigger._hold)
WATCH_INTERVAL_S = 5.0  # how often the watcher looks, unless the spec's health or autoscale interval says


class FlexServiceOperator(SpecOperator):
    """Deploy, undeploy, reconcile or watch a flexorch service.

    :param spec: path to a spec file, a spec dict, or a spec/step model (a service, or a pipeline's
        service step with ``step``).
    :param action: ``deploy`` (default), ``undeploy``, ``reconcile`` or ``watch`` (templated, e.g.
        ``"{{ params.action }}"``).

    See :class:`~.base.SpecOperator` for ``step``, ``overrides`` and ``target``.
    """

    template_fields = (*SpecOperator.template_fields, "action")
    ui_color = "#d9e6f0"
    operator_extra_links = (ServiceLink(),)

    def __init__(
        self, *, spec: str | Path | dict[str, Any] | BaseModel, action: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(spec=spec, **kwargs)
        if not self.workload.is_service:
            raise ConfigurationError(
                f"{self.workload.name} is a {self.workload.kind} job, not a service: run it with FlexOperator"
            )
        if action is None or "{{" not in action:  # a template is checked once rendered
            action = check_action(action, True)
        self.action = action

    @property
    def service(self) -> ServiceSpec | ServiceStep:
        """The workload as a service (its replicas, health, autoscale)."""
        w = self.workload
        assert isinstance(w, ServiceSpec | ServiceStep)  # checked in __init__
        return w

    def _job(self, context: Any, action: str | None = None, slots: list[int] | None = None) -> ResolvedJob:
        job = self.resolve_for_run(context["ti"], action=action or str(self.action))
        if job.action != "watch":
            job.slots = actions.slots_for(self.workload, slots)
        return job

    def execute(self, context: Any) -> Any:
        job = self._job(context)
        if job.action == "watch":
            return self._watch(context)
        return actions.converge(job, context["ti"], self.log)

    def _watch(self, context: Any) -> None:
        """Follow the service from the triggerer until it needs a change (watch_complete makes it)."""
        w = self.service
        actions.announce(w, "watch", context["ti"])
        interval = min(
            w.health.interval.total_seconds() if w.health else WATCH_INTERVAL_S,
            w.autoscale.interval.total_seconds() if w.autoscale else WATCH_INTERVAL_S,
        )
        self.log.info("watching service %s every %.0fs from the triggerer", w.name, interval)
        spec = w.model_dump(mode="json", exclude_none=True)
        trigger = ServiceWatchTrigger(spec=spec, interval=interval, not_before=time.time() + RESUME_HOLD_S)
        self.defer(trigger=trigger, method_name="watch_complete")

    def watch_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """One change: restore the replicas that need it and take an autoscale step, in one converge."""
        return actions.apply_change(
            self.service,
            event,
            time.time(),
            lambda slots: self._job(context, action="reconcile", slots=slots),
            self.log,
        )
