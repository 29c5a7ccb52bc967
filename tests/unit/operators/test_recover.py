"""retries.recover: which ended jobs FlexOperator submits again in the same try, and how it counts."""

from __future__ import annotations

from typing import Any

import pytest

from flexorch_provider.operators.flex import RESTARTS_KEY, FlexOperator
from flexorch_provider.records import JobEvent


class TI:
    task_id, map_index = "train", -1

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str, key: str, map_indexes: int) -> Any:
        return self.xcom.get(key)


def operator(**retries: Any) -> FlexOperator:
    spec = {"name": "t", "kind": "training", "target": "local", "run": "python train.py",
            "retries": {"count": 2, "recover_delay": "1s", **retries}}  # fmt: skip
    return FlexOperator(task_id="train", spec=spec, deferrable=False)


def ended(
    status: str = "failed", state: str = "failed", exit_code: int | None = 1, cause: str | None = None
) -> JobEvent:
    handle = {"target": "local", "job_id": "k/1", "run_key": "d/train/r/-1", "data": {"run_dir": "/nonexistent/k/1"}}
    return JobEvent(status, handle, "it ended", state=state, exit_code=exit_code, cause=cause)


def test_infrastructure_failures_are_recovered_up_to_the_budget_and_not_counted_in_retries():
    op, ti = operator(recover=2), TI()
    context = {"ti": ti}
    op._restarts(context, fresh=True)
    assert op._recover(context, ended(state="lost", exit_code=None, cause="host_lost"))
    assert ti.xcom[RESTARTS_KEY] == {"count": 1, "cause": "host_lost"}
    assert op._recover(context, ended(status="error", state="", exit_code=None, cause="host_lost"))
    assert ti.xcom[RESTARTS_KEY] == {"count": 2, "cause": "host_lost"}
    assert not op._recover(context, ended(state="failed", exit_code=None, cause="preempted"))  # spent: it stands
    assert op.retries == 2  # the job's own retries are Airflow's, untouched


@pytest.mark.parametrize(
    "event, recovered",
    [
        (ended(exit_code=1), False),  # the job's own failure: a retry, counted
        (ended(exit_code=33), True),  # asks to be started again
        (ended(status="success", state="succeeded", exit_code=0), False),
        (ended(state="failed", exit_code=None, cause="node_failed"), True),
        (ended(status="error", state="", exit_code=None), False),  # cannot follow it, cause unknown
    ],
)
def test_what_is_recovered(event, recovered):
    op, ti = operator(recover=3, resume_exit_codes=[33]), TI()
    context = {"ti": ti}
    op._restarts(context, fresh=True)
    assert op._recover(context, event) is recovered
    if recovered:
        assert ti.xcom[RESTARTS_KEY]["cause"] in ("resume_exit_code", "node_failed")


def test_without_recover_nothing_changes():
    op, ti = operator(), TI()
    context = {"ti": ti}
    op._restarts(context, fresh=True)
    assert RESTARTS_KEY not in ti.xcom  # no XCom for tasks that do not recover
    assert not op._recover(context, ended(state="lost", exit_code=None, cause="host_lost"))
