"""The lease trigger of a submitted service: it round-trips through the triggerer's serialization,
fires when the lifetime ends (not before), and on a kill undeploys the service it names."""

from __future__ import annotations

import asyncio
import importlib
import time

from flexorch_provider.triggers.service_lease import ServiceLeaseTrigger

SPEC = {"name": "nlp-web", "kind": "service", "target": "local", "replicas": 2, "run": "sleep 600", "timeout": "1m"}


def _rebuilt(trigger: ServiceLeaseTrigger) -> ServiceLeaseTrigger:
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**kwargs)


def test_it_fires_when_the_lifetime_ends_and_not_before():
    async def first_event(trigger):
        return await asyncio.wait_for(trigger.run().__anext__(), timeout=5)

    soon = _rebuilt(ServiceLeaseTrigger(SPEC, None, None, "d/run/r/0", until=time.time() + 0.3))
    started = time.monotonic()
    event = asyncio.run(first_event(soon))
    assert event.payload["ended"] == "lifetime" and time.monotonic() - started >= 0.25

    forever = ServiceLeaseTrigger(SPEC, None, None, "d/run/r/0", until=None)

    async def still_waiting():
        task = asyncio.ensure_future(forever.run().__anext__())
        await asyncio.sleep(0.3)
        waiting = not task.done()
        task.cancel()
        return waiting

    assert asyncio.run(still_waiting())  # no lifetime: only a cancel ends it


def test_a_kill_undeploys_the_service_it_names(monkeypatch):
    stopped = []
    monkeypatch.setattr("flexorch_provider.services.actions.stop", lambda job, log: stopped.append(job))
    trigger = _rebuilt(ServiceLeaseTrigger(SPEC, None, {"replicas": 3}, "d/run/r/0", until=None))
    asyncio.run(trigger.on_kill())
    (job,) = stopped
    assert (job.name, job.action, job.run_key, job.workload.replicas) == ("nlp-web", "undeploy", "d/run/r/0", 3)
