"""Follow a service's replicas from the triggerer (no worker slot) and fire only when something
must change: a replica not running or unhealthy past its grace (its back-off permitting), or an
autoscale step. The looking is :func:`flexorch_provider.services.watch.look`; this is its loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from flexorch_provider.fanout import reason
from flexorch_provider.services.watch import look


class ServiceWatchTrigger(BaseTrigger):
    """Fires ``{"restore": {slot: why}, "scale": {...}}`` when the service needs a change."""

    def __init__(
        self, spec: dict[str, Any], target: str | None = None, interval: float = 5.0, not_before: float | None = None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.target = target
        self.interval = float(interval)
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"spec": self.spec, "target": self.target, "interval": self.interval, "not_before": self.not_before},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        said = ""
        while True:
            try:
                event, seen = await asyncio.to_thread(look, self.spec, self.target, time.time())
            except Exception as e:  # a host or API briefly away: keep watching, say why once
                event, seen = None, f"cannot read the service now: {reason(e)}"
            if seen != said:
                self.log.info("%s", seen)
                said = seen
            if event is not None:
                wait = (self.not_before or 0) - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                yield TriggerEvent(event)
                return
            await asyncio.sleep(self.interval)
