"""The trigger behind ``GpuPoolSensor(deferrable=True)``: check the pool every interval."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from flexorch_provider.exceptions import FlexorchError


class GpuPoolTrigger(BaseTrigger):
    def __init__(self, pool: str, pools_file: str | None, gpus: int, gpu_type: str | None,
                 min_free_mib: int | None, max_utilization: int | None, poke_interval: float = 30.0) -> None:  # fmt: skip
        super().__init__()
        self.kwargs = {"pool": pool, "pools_file": pools_file, "gpus": gpus, "gpu_type": gpu_type,
                       "min_free_mib": min_free_mib, "max_utilization": max_utilization,
                       "poke_interval": poke_interval}  # fmt: skip

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", dict(self.kwargs)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from flexorch_provider.sensors.gpu_pool import check_pool

        k = self.kwargs
        said = ""
        while True:
            try:
                placement, line = await asyncio.to_thread(
                    check_pool, k["pool"], k["pools_file"], k["gpus"], k["gpu_type"], k["min_free_mib"],
                    k["max_utilization"],
                )  # fmt: skip
            except FlexorchError as e:  # the pool is misconfigured: waiting will not help
                yield TriggerEvent({"status": "error", "message": str(e)})
                return
            except Exception as e:
                line, placement = f"pool {k['pool']}: cannot take the inventory: {e}", None
            if line != said:
                self.log.info("%s", line)
                said = line
            if placement:
                yield TriggerEvent({"status": "success", "placement": placement})
                return
            await asyncio.sleep(k["poke_interval"])
