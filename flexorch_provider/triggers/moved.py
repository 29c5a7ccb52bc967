"""Whether a trigger's cancel means the task ended, or only that the trigger moved.

Airflow 3.3 calls a trigger's ``on_kill`` when a user acted on its task (marked it failed or
success, cleared it), and also when the trigger was handed to another triggerer because its own
stalled past the health threshold: the old triggerer then cancels it "by user action" while the
task is still deferred, and a new copy of the trigger follows the same job on the new triggerer.
A job must survive that, so before stopping anything a trigger asks Airflow for its task's state:
still ``deferred`` means the trigger moved, and the job is left alone.
"""

from __future__ import annotations

from typing import Any


async def task_still_deferred(trigger: Any) -> bool:
    """True when the trigger's task instance is still deferred (the trigger moved: leave the job
    running); False when it left that state (a user acted on it) or nothing says otherwise."""
    from asgiref.sync import sync_to_async

    ti = getattr(trigger, "task_instance", None)
    if ti is None:
        return False
    try:
        state = await sync_to_async(_state_of)(ti.dag_id, ti.run_id, ti.task_id, int(getattr(ti, "map_index", -1)))
    except Exception as e:  # cannot ask: do what the cancel asked for
        trigger.log.warning("cannot read the state of the task (%s): acting on the cancel", e)
        return False
    if state == "deferred":
        trigger.log.warning(
            "cancelled while the task is still deferred: this trigger moved to another triggerer, which follows "
            "the job from here; the job is left running"
        )
        return True
    return False


def _state_of(dag_id: str, run_id: str, task_id: str, map_index: int) -> str | None:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    found = RuntimeTaskInstance.get_task_states(dag_id=dag_id, task_ids=[task_id], run_ids=[run_id]) or {}
    states = found.get(run_id) or {}
    return states.get(task_id if map_index < 0 else f"{task_id}_{map_index}")
