"""A submitted service's lifetime: its ``run`` task stays deferred on this trigger while the
service is deployed, so the run is live (and counted against ``max_concurrent``) and its GPUs are
in the ledger for as long as the service runs.

The trigger fires when the lifetime (the service's ``timeout``) ends: the task then undeploys the
service in the worker. A run cancelled before (``flexorch cancel``, marked failed in the UI) kills
the task: :meth:`ServiceLeaseTrigger.on_kill` undeploys the service from the triggerer, as a
job's trigger cancels its job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

FOREVER_S = 3600.0  # no lifetime: wake up this often, and sleep again


class ServiceLeaseTrigger(BaseTrigger):
    """Holds a submitted service until ``until`` (epoch seconds; None: until the run is cancelled).

    :param spec: the spec as JSON data, with ``step`` and ``overrides``: the service to undeploy.
    :param run_key: the task instance's run key (the service's job key in the ledger).
    :param not_before: the event is held back until then (see ``FlexJobTrigger._hold``).
    """

    def __init__(
        self,
        spec: dict[str, Any],
        step: str | None,
        overrides: dict[str, Any] | None,
        run_key: str,
        until: float | None,
        not_before: float | None = None,
    ) -> None:
        super().__init__()
        self.spec, self.step, self.overrides = spec, step, overrides
        self.run_key = run_key
        self.until = until
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "spec": self.spec,
                "step": self.step,
                "overrides": self.overrides,
                "run_key": self.run_key,
                "until": self.until,
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            left = FOREVER_S if self.until is None else self.until - time.time()
            if left <= 0:
                break
            await asyncio.sleep(min(left, FOREVER_S))
        if self.not_before is not None and self.not_before > time.time():
            await asyncio.sleep(self.not_before - time.time())
        yield TriggerEvent({"ended": "lifetime", "at": time.time()})

    async def on_kill(self) -> None:
        """The run was cancelled (its task killed): undeploy the service. (Not when the task is still
        deferred: the trigger only moved to another triggerer.)"""
        from flexorch_provider.triggers.moved import task_still_deferred

        if await task_still_deferred(self):
            return
        try:
            await asyncio.to_thread(self._undeploy)
        except Exception:
            self.log.exception("could not undeploy the service of %s", self.run_key)

    def _undeploy(self) -> None:
        from flexorch_provider.backends.base import ResolvedJob
        from flexorch_provider.resolve import load_workload
        from flexorch_provider.services import actions

        workload = load_workload(self.spec, step=self.step, overrides=self.overrides)
        self.log.info("task killed: undeploying service %s", workload.name)
        job = ResolvedJob.for_run(workload, self.run_key, env={}, secrets={}, action="undeploy")
        job.slots = actions.slots_for(workload)
        actions.stop(job, self.log)
