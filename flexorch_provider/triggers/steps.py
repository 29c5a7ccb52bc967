"""Wait, in the triggerer, until other map indexes of a task have ended: a submitted pipeline's
step starts after the steps it needs (``after:``) without holding a worker slot meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

ENDED = frozenset({"success", "failed", "upstream_failed", "skipped", "removed"})


def ended_states(dag_id: str, run_id: str, task_id: str, indexes: list[int]) -> dict[int, str] | None:
    """The states of ``task_id``'s map ``indexes`` in the run once all have ended, else None."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    found = RuntimeTaskInstance.get_task_states(dag_id=dag_id, task_ids=[task_id], run_ids=[run_id])
    states = (found or {}).get(run_id) or {}
    out = {i: str(states.get(f"{task_id}_{i}")) for i in indexes}
    return out if all(s in ENDED for s in out.values()) else None


class StepsDoneTrigger(BaseTrigger):
    """Fires with ``{"states": {index: state}}`` once every index has ended (no sooner than
    ``not_before``: see FlexOperator's resume hold)."""

    def __init__(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        indexes: list[int],
        poll_interval: float = 2.0,
        not_before: float | None = None,
    ) -> None:
        super().__init__()
        self.for_dag, self.for_run, self.for_task = dag_id, run_id, task_id
        self.indexes = [int(i) for i in indexes]
        self.poll_interval = float(poll_interval)
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "dag_id": self.for_dag,
                "run_id": self.for_run,
                "task_id": self.for_task,
                "indexes": self.indexes,
                "poll_interval": self.poll_interval,
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        while True:
            try:
                states = await sync_to_async(ended_states)(self.for_dag, self.for_run, self.for_task, self.indexes)
            except Exception as e:  # the API may be briefly unavailable: keep waiting, say why
                self.log.warning("cannot read the states of %s %s yet: %s", self.for_task, self.indexes, e)
                states = None
            if states is not None:
                wait = (self.not_before or 0) - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                yield TriggerEvent({"states": {str(k): v for k, v in states.items()}})
                return
            await asyncio.sleep(self.poll_interval)
