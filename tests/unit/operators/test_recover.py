"""retries.recover: which ended jobs FlexOperator submits again in the same try, and how it counts."""

from __future__ import annotations

import logging
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


def test_no_target_with_room_waits_and_tries_again_while_recoveries_last(monkeypatch):
    """Every target refusing for want of room now (NoCapacityError from each) is the infrastructure's:
    the same try waits and submits again; when recoveries are spent, or a target refused for another
    reason (a SubmitError), the refusal stands."""
    from flexorch_provider.backends.base import JobHandle
    from flexorch_provider.exceptions import NoCapacityError, SubmitError
    from flexorch_provider.operators import flex
    from flexorch_provider.placement import placer

    class Full:
        def __init__(self, error: type[Exception]) -> None:
            self.error = error

        def submit(self, job: Any) -> Any:
            raise self.error("the host has no free A100")

    refusals: list[type[Exception]] = [NoCapacityError, NoCapacityError]
    monkeypatch.setattr(placer, "get_backend", lambda target: Full(refusals.pop(0)))
    with pytest.raises(NoCapacityError, match="no target accepted the job"):
        placer.first_that_accepts(["ssh", "slurm"], lambda b: b.submit(None), logging.getLogger("test"))
    refusals[:] = [NoCapacityError, SubmitError]
    with pytest.raises(SubmitError) as info:
        placer.first_that_accepts(["ssh", "slurm"], lambda b: b.submit(None), logging.getLogger("test"))
    assert not isinstance(info.value, NoCapacityError)  # one target refused the job itself: no waiting helps

    submits: list[dict[str, str]] = []

    class Placer:
        def __init__(self, workload: Any, log: Any) -> None:
            pass

        def submit(self, job: Any) -> Any:
            submits.append({k: v for k, v in job.env.items() if k.startswith("FLEXORCH_RESTART")})
            if len(submits) < 3:
                raise NoCapacityError("no target accepted the job:\n  local: no free GPU")
            return JobHandle("local", "k/1", job.run_key, {}), None

    monkeypatch.setattr(flex, "Placer", Placer)
    op, ti = operator(recover=2), TI()
    monkeypatch.setattr(op, "_job", lambda context: flex.ResolvedJob.for_run(op.workload, "d/train/r/-1"))
    monkeypatch.setattr(op, "on_submit", lambda job, handle: None)
    monkeypatch.setattr(op, "_track", lambda context, handle, choice: handle.job_id)
    assert op.execute({"ti": ti}) == "k/1"
    assert submits == [
        {"FLEXORCH_RESTART_COUNT": "0", "FLEXORCH_RESTART_CAUSE": ""},
        {"FLEXORCH_RESTART_COUNT": "1", "FLEXORCH_RESTART_CAUSE": "no_capacity"},
        {"FLEXORCH_RESTART_COUNT": "2", "FLEXORCH_RESTART_CAUSE": "no_capacity"},
    ]
    op, ti, submits[:] = operator(recover=1), TI(), []
    monkeypatch.setattr(op, "_job", lambda context: flex.ResolvedJob.for_run(op.workload, "d/train/r/-1"))
    with pytest.raises(NoCapacityError):
        op.execute({"ti": ti})  # one recovery, then the refusal stands
    assert len(submits) == 2


def test_each_attempt_of_a_recovered_job_is_its_own_ledger_entry(monkeypatch):
    """A recovery ends the attempt before the next starts (a submission's GPU time: each attempt counts
    on its own, none is overwritten by the next), and the next attempt's ledger key names its recovery."""
    from types import SimpleNamespace

    from flexorch_provider.backends.base import JobHandle
    from flexorch_provider.operators import flex
    from flexorch_provider.operators.submit import SubmittedStepOperator

    calls: list[tuple[str, int]] = []

    class Recording(FlexOperator):
        def on_submit(self, job: Any, handle: Any) -> None:
            calls.append(("start", self._restart["count"]))

        def on_end(self, run_key: str) -> None:
            calls.append(("end", self._restart["count"]))

    class Placer:
        def __init__(self, workload: Any, log: Any) -> None:
            pass

        def submit(self, job: Any) -> Any:
            return JobHandle("local", "k/1", job.run_key, {"run_dir": "/nonexistent/k/1"}), None

    monkeypatch.setattr(flex, "Placer", Placer)
    spec = {"name": "t", "kind": "training", "target": "local", "run": "python train.py",
            "retries": {"recover": 2, "recover_delay": "1s"}}  # fmt: skip
    op, ti = Recording(task_id="train", spec=spec, deferrable=False), TI()
    monkeypatch.setattr(op, "_job", lambda context: flex.ResolvedJob.for_run(op.workload, "d/train/r/-1"))
    monkeypatch.setattr(op, "_track", lambda context, handle, choice: handle.job_id)
    context = {"ti": ti}
    op.execute(context)
    assert op._recover(context, ended(state="lost", exit_code=None, cause="host_lost"))
    op.execute_recover(context)
    assert calls == [("start", 0), ("end", 0), ("start", 1)]

    def key(restarts: int) -> str:
        step = SimpleNamespace(_try=2, _retried=1, _restart={"count": restarts, "cause": "host_lost"})
        return SubmittedStepOperator._ledger_try.fget(step)  # type: ignore[attr-defined]

    assert [key(0), key(1), key(2)] == ["2.1", "2.1.1", "2.1.2"]
