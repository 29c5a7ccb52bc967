"""GpuPoolSensor: wait until a GPU pool can fit a request, then say where.

::

    wait = GpuPoolSensor(task_id="wait_gpus", pool="lab", gpus=2, gpu_type="A100",
                         min_free_memory="40Gi", max_utilization=10, mode="reschedule")
    train = FlexOperator(task_id="train", spec="specs/finetune.yaml",
                         placement="{{ ti.xcom_pull(task_ids='wait_gpus') }}")
    wait >> train

The placement it pushes to XCom (``{"pool", "source", "host", "gpus", "model"}``) pins the
job: on ssh the job runs on that host with ``CUDA_VISIBLE_DEVICES`` set to those indices;
Slurm and Kubernetes place jobs with their own schedulers, so there the sensor only waits
until the pool has room. Modes: ``poke`` and ``reschedule`` (Airflow's), or
``deferrable=True`` (a trigger checks the pool; the worker slot is free meanwhile).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk.bases.sensor import BaseSensorOperator, PokeReturnValue

from flexorch_provider.exceptions import ConfigurationError, FlexorchError
from flexorch_provider.inventory import check_pool


def memory_mib(value: str | int | None) -> int | None:
    """'40Gi' / '80GB' / 40960 (MiB) → MiB."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    from flexorch_provider.spec.units import parse_memory

    return parse_memory(value) // 2**20


class GpuPoolSensor(BaseSensorOperator):
    """Wait until ``pool`` has ``gpus`` free GPUs on one node (of ``gpu_type``, with
    ``min_free_memory`` free and at most ``max_utilization`` percent busy each).

    :param pool: a GPU pool name from gpu_pools.yaml (kept as ``gpu_pool``: ``pool`` on an
        operator is its Airflow pool, which this sensor leaves at the default; pass
        ``airflow_pool=`` to set that).
    :param pools_file: the pools file (default: $FLEXORCH_GPU_POOLS or <dags>/specs/gpu_pools.yaml).
    :param deferrable: wait in the triggerer instead of a worker slot.
    """

    template_fields = ("gpu_pool", "gpus", "gpu_type")
    ui_color = "#f0e6d9"

    def __init__(
        self,
        *,
        pool: str,
        gpus: int = 1,
        gpu_type: str | None = None,
        min_free_memory: str | int | None = None,
        max_utilization: int | None = None,
        pools_file: str | None = None,
        deferrable: bool = False,
        airflow_pool: str | None = None,
        **kwargs: Any,
    ) -> None:
        if airflow_pool is not None:
            kwargs["pool"] = airflow_pool
        super().__init__(**kwargs)
        if int(gpus) < 1:
            raise ConfigurationError(f"gpus must be at least 1, got {gpus!r}")
        if max_utilization is not None and not 0 <= int(max_utilization) <= 100:
            raise ConfigurationError(f"max_utilization is a percentage (0-100), got {max_utilization!r}")
        self.gpu_pool = pool
        self.gpus = gpus
        self.gpu_type = gpu_type
        self.min_free_mib = memory_mib(min_free_memory)
        self.max_utilization = max_utilization
        self.pools_file = pools_file
        self.deferrable = deferrable

    def _check(self) -> tuple[dict[str, Any] | None, str]:
        return check_pool(
            self.gpu_pool, self.pools_file, int(self.gpus), self.gpu_type, self.min_free_mib, self.max_utilization
        )

    def poke(self, context: Any) -> PokeReturnValue:
        try:
            placement, line = self._check()
        except (FlexorchError, ValueError):
            raise  # a missing or invalid pool: waiting will not fix it
        except Exception as e:  # a source that cannot be asked this time: wait, say why
            self.log.warning("pool %s: cannot take the inventory: %s", self.gpu_pool, e)
            return PokeReturnValue(False)
        self.log.info("%s", line)
        if placement:
            self.log.info("placement: %s", placement)
            return PokeReturnValue(True, placement)
        return PokeReturnValue(False)

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        from flexorch_provider.triggers.gpu_pool import GpuPoolTrigger

        self.defer(
            trigger=GpuPoolTrigger(
                pool=self.gpu_pool,
                pools_file=self.pools_file,
                gpus=int(self.gpus),
                gpu_type=self.gpu_type,
                min_free_mib=self.min_free_mib,
                max_utilization=self.max_utilization,
                poke_interval=float(self.poke_interval),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)) if self.timeout else None,
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("status") != "success":
            raise FlexorchError(f"GPU pool {self.gpu_pool}: {event.get('message')}")
        self.log.info("placement: %s", event["placement"])
        return event["placement"]
