"""The trigger behind ``GpuPoolSensor(deferrable=True)``: check the pool every interval."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from flexorch_provider.exceptions import FlexorchError
from flexorch_provider.inventory import check_pool


class GpuPoolTrigger(BaseTrigger):
    def __init__(
        self,
        pool: str,
        pools_file: str | None,
        gpus: int,
        gpu_type: str | None,
        min_free_mib: int | None,
        max_utilization: int | None,
        poke_interval: float = 30.0,
    ) -> None:
        super().__init__()
        self.pool, self.pools_file, self.gpus, self.gpu_type = pool, pools_file, gpus, gpu_type
        self.min_free_mib, self.max_utilization, self.poke_interval = min_free_mib, max_utilization, poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "pool": self.pool,
            "pools_file": self.pools_file,
            "gpus": self.gpus,
            "gpu_type": self.gpu_type,
            "min_free_mib": self.min_free_mib,
            "max_utilization": self.max_utilization,
            "poke_interval": self.poke_interval,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        said = ""
        while True:
            try:
                placement, line = await asyncio.to_thread(
                    check_pool,
                    self.pool,
                    self.pools_file,
                    self.gpus,
                    self.gpu_type,
                    self.min_free_mib,
                    self.max_utilization,
                )
            except FlexorchError as e:  # the pool is misconfigured: waiting will not help
                yield TriggerEvent({"status": "error", "message": str(e)})
                return
            except Exception as e:
                line, placement = f"pool {self.pool}: cannot take the inventory: {e}", None
            if line != said:
                self.log.info("%s", line)
                said = line
            if placement:
                yield TriggerEvent({"status": "success", "placement": placement})
                return
            await asyncio.sleep(self.poke_interval)
