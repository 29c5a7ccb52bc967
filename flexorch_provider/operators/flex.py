"""FlexOperator: run one flexorch job (a spec, or one step of a pipeline) on its target.

Everything about the job comes from the spec; the operator only adds Airflow knobs::

    FlexOperator(task_id="train", spec="specs/llm-finetune.yaml")
    FlexOperator(task_id="train", spec=spec_dict, overrides={"resources": {"gpus": 4}},
                 target="local", deferrable=False, poll_interval=10)

The path is always the same: resolve (templates, secrets) → the :class:`~.placement.placer.Placer`
submits it where the spec's targets and policy say (idempotent on the run key) → follow it from the
worker, then with :class:`FlexJobTrigger` (or in place when not deferrable) → XCom on success, an
error with the log tail otherwise. A job still pending at its ``max_pending`` deadline goes back to
the placer, which says where it now runs. Services have their own operator
(:class:`~.service.FlexServiceOperator`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from flexorch_provider import links
from flexorch_provider.backends.base import JobHandle, LogCursor, ResolvedJob
from flexorch_provider.backends.registry import get_backend
from flexorch_provider.exceptions import BackendError, ConfigurationError, JobFailedError, NoCapacityError
from flexorch_provider.follower import TAIL_LINES, Follower
from flexorch_provider.links import RemoteJobLink
from flexorch_provider.masking import masker_for
from flexorch_provider.operators.base import SpecOperator
from flexorch_provider.placement.choice import Choice
from flexorch_provider.placement.placer import Placer
from flexorch_provider.records import CAUSES, JobEvent, JobRecord, public
from flexorch_provider.triggers.job import FlexJobTrigger

RESTARTS_KEY = "flexorch_restarts"  # XCom: {count, cause} of the try's recoveries (retries.recover)
MAX_RECOVER_DELAY_S = 600.0
DEFER_AFTER_S = 10.0  # follow a job this long in the worker before deferring (a shorter job never defers)
PRE_DEFER_POLL_S = 0.5  # how often, meanwhile
RESUME_HOLD_S = 10.0  # a deferred task resumes no sooner than this after deferring (FlexJobTrigger._hold)


class FlexOperator(SpecOperator):
    """Run a flexorch job.

    :param spec: path to a spec file, a spec dict, or a spec/step model.
    :param deferrable: free the worker slot while the job runs (default True).
    :param poll_interval: seconds between status checks.
    :param defer_after: seconds to follow a job from the worker before deferring (default 10). A job
        that ends sooner finishes the task at once, without the defer/resume round trip; 0 defers at
        once. With Airflow 3.3.2's scheduler race (apache/airflow#67287: a task whose trigger
        fires moments after it deferred can be failed) in mind, a deferred task also resumes no
        sooner than 10 s after deferring.
    :param placement: where a GpuPoolSensor placed the job, usually
        ``"{{ ti.xcom_pull(task_ids='wait_gpus') }}"`` (templated): on ssh the job runs on that
        host with ``CUDA_VISIBLE_DEVICES`` set to its GPU indices.

    See :class:`~.base.SpecOperator` for ``step``, ``overrides``, ``target`` and GPU pools.
    Subclasses hook in with :meth:`on_submit`, :meth:`on_end` and :meth:`team`.
    """

    template_fields = (*SpecOperator.template_fields, "placement")
    ui_color = "#d9f0e3"
    operator_extra_links = (RemoteJobLink(),)
    accepts_services: ClassVar[bool] = False  # a service runs with FlexServiceOperator

    def __init__(
        self,
        *,
        spec: str | Path | dict[str, Any] | BaseModel,
        deferrable: bool = True,
        poll_interval: float = 5.0,
        defer_after: float = DEFER_AFTER_S,
        placement: dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(spec=spec, **kwargs)
        if self.workload.is_service and not self.accepts_services:
            raise ConfigurationError(
                f"{self.workload.name} is a service: run its actions with "
                f"FlexServiceOperator(task_id=..., spec=..., action='deploy'|'undeploy'|'reconcile'|'watch')"
            )
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.defer_after = max(0.0, float(defer_after))
        self.placement = placement
        self._handle: JobHandle | None = None

    # --- hooks for subclasses (the submitted-step operator records GPU time with them) ----------
    def on_submit(self, job: ResolvedJob, handle: JobHandle) -> None:
        """This try's job was submitted (or found again on its target)."""

    def on_end(self, run_key: str) -> None:
        """The task is done with its job: the outcome is recorded, or the task was killed."""

    def team(self) -> str | None:
        """The team the job's GPU time counts against, where a policy says (submitted jobs)."""
        return None

    # --- execution -----------------------------------------------------------------------------
    def _job(self, context: Any) -> ResolvedJob:
        return self.resolve_for_run(context["ti"], placement=parse_placement(self.placement))

    def execute(self, context: Any) -> Any:
        return self._start(context, self._restarts(context, fresh=True))

    def execute_recover(self, context: Any, event: Any = None) -> Any:
        """After a recovery's delay: the job again, in the same try (retries.recover)."""
        return self._start(context, self._restarts(context))

    def _start(self, context: Any, restarts: dict[str, Any]) -> Any:
        job = self._job(context)
        # the job knows whether it starts anew or after the infrastructure failed it (then: resume)
        job.env.update(FLEXORCH_RESTART_COUNT=str(restarts["count"]), FLEXORCH_RESTART_CAUSE=restarts["cause"] or "")
        self._restart = restarts
        try:
            handle, choice = Placer(self.workload, self.log).submit(job)
        except NoCapacityError as e:  # no target has room now: the infrastructure's, while recoveries last
            r = self.workload.retries
            if not r.recover or restarts["count"] >= r.recover:
                raise
            self._again(context, "no_capacity", f"no target could take the job ({e})", restarts["count"])
            return self.execute_recover(context)  # not deferrable: the delay has passed
        self.on_submit(job, handle)
        return self._track(context, handle, choice)

    def _restarts(self, context: Any, fresh: bool = False) -> dict[str, Any]:
        """This try's recoveries so far (``{count, cause}``, in XCom: the task may resume on another worker);
        a try's first start sets none."""
        ti = context["ti"]
        if fresh:
            restarts = {"count": 0, "cause": None}
            if self.workload.retries.recover:
                ti.xcom_push(key=RESTARTS_KEY, value=restarts)
            return restarts
        value = ti.xcom_pull(task_ids=ti.task_id, key=RESTARTS_KEY, map_indexes=ti.map_index)
        return dict(value) if isinstance(value, dict) else {"count": 0, "cause": None}

    def _recover(self, context: Any, event: JobEvent) -> bool:
        """A job the infrastructure failed (records.CAUSES) or that asked to be started again: submit it
        again in this try, after a delay, while ``retries.recover`` lasts. False: the outcome stands."""
        r = self.workload.retries
        cause = event.cause
        if event.status == "failed" and event.exit_code is not None and event.exit_code in r.resume_exit_codes:
            cause = "resume_exit_code"
        if cause is None or event.status not in ("failed", "error") or not r.recover:
            return False
        done = self._restarts(context)["count"]
        job = event.job
        if done >= r.recover:
            self.log.warning("job %s: %s; all %d recoveries are spent: the failure stands", job.job_id,
                             CAUSES.get(cause, cause), r.recover)  # fmt: skip
            return False
        if event.status == "error":  # its host stopped answering: the job may still run there
            try:
                get_backend(job.target).cancel(job)
            except Exception as e:
                self.log.warning(
                    "could not stop job %s where it was (%s); it is started again elsewhere", job.job_id, e
                )
        else:
            try:  # recorded: its run key's next submit starts anew instead of adopting it
                get_backend(job.target).claim(job)
            except Exception:
                pass
        self.on_end(job.run_key)  # this attempt is over (a submission's GPU time stops counting here)
        return self._again(
            context, cause, f"job {job.job_id} ended: {CAUSES.get(cause, cause)} ({event.message})", done
        )

    def _again(self, context: Any, cause: str, what: str, done: int) -> bool:
        """Recovery ``done + 1``: counted in XCom, said in the log, then the delay (deferred when the task
        is deferrable, which resumes in ``execute_recover``; else slept here, and True)."""
        r = self.workload.retries
        delay = min(r.recover_delay.total_seconds() * 2**done, MAX_RECOVER_DELAY_S)
        context["ti"].xcom_push(key=RESTARTS_KEY, value={"count": done + 1, "cause": cause})
        self.log.warning(
            "%s: submitting it again in %ds, recovery %d of %d (not counted in retries)",
            what, int(delay), done + 1, r.recover,
        )  # fmt: skip
        self._handle = None
        if self.deferrable:
            from datetime import timedelta

            from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=delay)), method_name="execute_recover")
        time.sleep(delay)
        return True

    def _track(self, context: Any, handle: JobHandle, choice: Choice, new: bool = True) -> Any:
        """Follow a submitted job from the worker, then (deferrable) from the trigger. ``new``: a job
        the task has not announced yet (not one that keeps its place after max_pending)."""
        self._handle = handle
        self._announce(context["ti"], handle, choice, say=new)
        pending_until = Placer(self.workload, self.log).pending_until(handle, choice)
        if not self.deferrable or not self._may_defer(handle):
            event, _ = self._follow(handle, pending_until=pending_until)
            assert event is not None  # without a deadline, following ends only with the job
            return self._outcome(context, event, choice)
        event, cursor = self._follow(handle, until=time.monotonic() + self.defer_after, pending_until=pending_until)
        if event is not None:
            return self._outcome(context, event, choice)
        self.defer(
            trigger=FlexJobTrigger(
                handle=handle.to_dict(),
                poll_interval=self.poll_interval,
                log_cursor=cursor,
                tail_lines=TAIL_LINES,
                not_before=time.time() + RESUME_HOLD_S,
                pending_until=pending_until,
                carry={"choice": choice.to_dict()},
            ),
            method_name="execute_complete",
        )

    def _may_defer(self, handle: JobHandle) -> bool:
        """A local job is followed by a triggerer only where that triggerer sees this machine: its
        ``local.defer``, by default whether Airflow runs every task on one machine."""
        if handle.target != "local":
            return True
        from flexorch_provider.store import distributed_executors

        chosen = self.workload.local.defer
        if chosen is None and distributed_executors():
            self.log.info(
                "following the local job from this worker, not the triggerer: Airflow runs tasks with %s, "
                "so a triggerer may be on another machine (local.defer: true if it is not)",
                ", ".join(distributed_executors()),
            )
            return False
        return chosen is not False

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        received = JobEvent.from_dict(event)
        choice = Choice.from_dict((received.carry or {}).get("choice"))
        return self._outcome(context, received, choice or Placer(self.workload, self.log).new_choice())

    def _outcome(self, context: Any, event: JobEvent, choice: Choice) -> Any:
        if not hasattr(self, "_restart") and self.workload.retries.recover:  # resumed from the trigger:
            self._restart = self._restarts(context)  # this try's recoveries so far
        if event.status == "pending":  # max_pending has passed: the placer says where it runs now
            placer = Placer(self.workload, self.log)
            decision = placer.after_pending(self._job(context), event.job, event.message or "pending", choice)
            return self._track(context, decision.handle, decision.choice, new=decision.moved)
        if self._recover(context, event):  # not deferrable: the delay has passed
            return self.execute_recover(context)
        return self._finish(event)

    def _announce(self, ti: Any, handle: JobHandle, choice: Choice, say: bool = True) -> None:
        """Say where the job runs, as soon as it is submitted: the ``job`` XCom (what the flexorch page
        lists) and the "Remote job" link, so both work while the job runs."""
        try:
            where = get_backend(handle.target).where(handle)
        except Exception as e:  # a handle the backend cannot describe still runs; the page says so
            where = {"summary": f"{handle.target} job {handle.job_id} ({e})"}
        gpus = self.workload.resources.gpus
        placed = (parse_placement(self.placement) or {}).get("gpus")
        record = JobRecord(
            **public(handle),
            name=self.workload.name,
            where=where,
            gpus=len(placed) if placed is not None else (gpus.count * self.workload.resources.nodes if gpus else 0),
            gpu_pool=self.workload.gpu_pool,
            owner=self.owner,
            team=self.team(),
            submitted_at=choice.submitted_at or time.time(),
            choice=choice,  # how the target was chosen: policy, what each target had free, moves
            restarts=int(getattr(self, "_restart", {}).get("count") or 0),
            restart_cause=getattr(self, "_restart", {}).get("cause"),
            # how to find the job again (no secret values: secret_refs are references, data is the backend's)
            handle={k: v for k, v in handle.to_dict().items() if k != "notes"},
        )
        ti.xcom_push(key="job", value=record.to_dict())
        url = links.job_url(ti, record)
        links.push(ti, RemoteJobLink, url)
        if say:
            self.log.info("remote job: %s (%s)", record.summary, url)

    def _follow(
        self, handle: JobHandle, until: float | None = None, pending_until: float | None = None
    ) -> tuple[JobEvent | None, LogCursor]:
        """Follow the job from the worker, streaming its log: its final event once it ends, or None
        with the log cursor reached when ``until`` (a monotonic time) comes first. Before ``until``
        a failure defers at once: the trigger has the patience (and the retries) for it; without
        ``until`` the worker is as patient as the trigger (:meth:`Follower.failed`)."""
        try:
            mask = masker_for(handle.secret_refs)
            follower = Follower(get_backend(handle.target), handle, mask=mask, pending_until=pending_until)
        except Exception as e:
            if until is None:
                raise
            self.log.warning("deferring at once: cannot follow the job from here (%s)", e)
            return None, 0
        looked_last = False
        while True:
            try:
                step = follower.observe(follower.poll(), until=until)
            except Exception as e:
                if until is not None:
                    self.log.warning("deferring: following job %s from the worker failed (%s)", handle.job_id, e)
                    return None, follower.cursor
                event = follower.failed(e)
                if event is not None:
                    return event, follower.cursor
                self.log.warning("following job %s failed (%d in a row): %s", handle.job_id, follower.errors, e)
                time.sleep(self.poll_interval)
                continue
            step.log_to(self.log)
            if step.event is not None:
                return step.event, follower.cursor
            interval = self.poll_interval
            if until is not None:
                remaining = until - time.monotonic()
                if remaining <= 0 and (looked_last or not step.wrote):
                    return None, follower.cursor
                if remaining <= 0:  # new lines since the poll: one more look, a job that just ended needs no trigger
                    looked_last = True
                    continue
                interval = min(interval, PRE_DEFER_POLL_S, remaining)
            time.sleep(interval)

    def _finish(self, event: JobEvent) -> dict[str, Any]:
        self._handle = None
        try:
            return self._result(event)
        finally:
            self.on_end(str(event.handle.get("run_key") or ""))

    def _result(self, event: JobEvent) -> dict[str, Any]:
        handle = event.job
        if event.ended:
            try:  # before Airflow records it: a try after this one (a cleared task) runs the job anew
                get_backend(handle.target).claim(handle)
            except Exception as e:
                self.log.warning("could not mark job %s as recorded (%s): a later try may adopt it", handle.job_id, e)
        if event.status == "success":
            self.log.info("job %s on %s succeeded", handle.job_id, handle.target)
            return {**public(handle), "state": event.state, "exit_code": event.exit_code}
        failed = event.status == "failed"
        what = f" {event.state}:" if failed else ":"
        summary = f"job {handle.job_id} on {handle.target}{what} {event.message}"
        # the reason as a log line (the job's last lines are just above): the task log in the UI and
        # the REST API shows only "Task failed with exception" for the exception itself
        self.log.error("%s", summary)
        if failed:
            raise JobFailedError(summary, exit_code=event.exit_code, log_tail=event.log_tail)
        raise BackendError(summary)

    def on_kill(self) -> None:
        """The task was killed (mark failed, timeout, SIGTERM): stop the job."""
        handle = self._handle
        if handle is None:
            return
        self.log.info("cancelling job %s on %s", handle.job_id, handle.target)
        try:
            get_backend(handle.target).cancel(handle)
        except Exception:
            self.log.exception("could not cancel job %s", handle.job_id)
        self.on_end(handle.run_key)


def parse_placement(value: Any) -> dict[str, Any] | None:
    """A GpuPoolSensor's XCom: a dict, or its rendered text (JSON or a Python literal)."""
    if value in (None, "", "None"):
        return None
    if isinstance(value, str):
        import ast
        import json

        try:
            value = json.loads(value)
        except ValueError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ConfigurationError(f"placement {value!r} is not a placement dict (from GpuPoolSensor)") from None
    if not isinstance(value, dict) or "host" not in value:
        raise ConfigurationError(f"placement must be a dict with 'host' and 'gpus' (from GpuPoolSensor), not {value!r}")
    return value
