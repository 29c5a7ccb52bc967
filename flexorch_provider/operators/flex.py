"""FlexOperator: run one flexorch spec (or one pipeline step) on its target.

Everything about the job comes from the spec; the operator only adds Airflow knobs::

    FlexOperator(task_id="train", spec="specs/llm-finetune.yaml")
    FlexOperator(task_id="train", spec=spec_dict, overrides={"resources": {"gpus": 4}},
                 target="local", deferrable=False, poll_interval=10)

The path is always the same: resolve (templates, secrets) → submit to the first target
that accepts (idempotent on the run key) → follow with :class:`FlexJobTrigger` (or poll
in place when not deferrable) → XCom on success, an error with the log tail otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from airflow.sdk import BaseOperator
from pydantic import BaseModel

from flexorch_provider import links
from flexorch_provider.backends.base import (
    Backend,
    JobHandle,
    JobState,
    LogCursor,
    ResolvedJob,
    check_action,
    run_key,
)
from flexorch_provider.backends.registry import get_backend
from flexorch_provider.backends.services.watch import WatchState
from flexorch_provider.exceptions import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    JobFailedError,
    SubmitError,
)
from flexorch_provider.follow import TAIL_LINES, Follower
from flexorch_provider.links import RemoteJobLink, ServiceLink
from flexorch_provider.masking import masker_for, secret_refs
from flexorch_provider.resolve import load_workload, resolve_registry, resolve_secrets
from flexorch_provider.spec.models import ServiceSpec, ServiceStep
from flexorch_provider.triggers.job import FlexJobTrigger
from flexorch_provider.triggers.service_watch import ServiceWatchTrigger, initial_slots

DEFER_AFTER_S = 10.0  # follow a job this long in the worker before deferring (a shorter job never defers)
PRE_DEFER_POLL_S = 0.5  # how often, meanwhile
MAX_STAYS_KEPT = 5  # the job XCom keeps the last few "no other target has room" decisions
RESUME_HOLD_S = 10.0  # a deferred task resumes no sooner than this after deferring (FlexJobTrigger._hold)
T = TypeVar("T")
TEMPLATE_MARKS = ("{{", "{%", "{#")
CR_STAND_IN = "\ue000"  # a private-use character carries \r through Jinja, which turns \r\n into \n


class FlexOperator(BaseOperator):
    """Run a flexorch spec.

    :param spec: path to a spec file, a spec dict, or a spec/step model.
    :param step: for a pipeline spec, the step to run.
    :param action: for a service: ``deploy`` (default), ``undeploy`` or ``reconcile`` (templated).
    :param overrides: values merged into the spec before validation, e.g. ``{"resources": {"gpus": 2}}``.
    :param target: replaces the spec's target (or ordered target list).
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

    A spec with ``gpu_pool`` takes one slot of the Airflow pool ``gpu-<pool>`` per GPU it
    requests (``flexorch pools sync`` sizes those pools), so Airflow never over-commits.
    """

    template_fields = ("run", "setup", "env", "workdir", "action", "placement")
    template_fields_renderers = {"run": "bash", "setup": "bash", "env": "json"}
    template_ext = ()
    ui_color = "#d9f0e3"
    operator_extra_links = (RemoteJobLink(), ServiceLink())

    def __init__(
        self,
        *,
        spec: str | Path | dict[str, Any] | BaseModel,
        step: str | None = None,
        action: str | None = None,
        overrides: dict[str, Any] | None = None,
        target: str | list[str] | None = None,
        deferrable: bool = True,
        poll_interval: float = 5.0,
        defer_after: float = DEFER_AFTER_S,
        placement: dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        workload = load_workload(spec, step=step, overrides=overrides, target=target)
        gpus = workload.resources.gpus.count * workload.resources.nodes if workload.resources.gpus else 0
        if workload.gpu_pool and gpus:
            from flexorch_provider.inventory.pools import airflow_pool_name

            kwargs.setdefault("pool", airflow_pool_name(workload.gpu_pool))
            kwargs.setdefault("pool_slots", gpus)
        if action is None or "{{" not in action:  # a template is checked once rendered
            action = check_action(action, workload.is_service)
        kwargs.setdefault("retries", workload.retries.count)
        kwargs.setdefault("retry_delay", workload.retries.delay)
        super().__init__(**kwargs)
        self.workload = workload
        self.run = workload.run
        self.setup = workload.setup
        self.env = dict(workload.env)
        self.workdir = workload.workdir
        self.action = action
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.defer_after = max(0.0, float(defer_after))
        self.placement = placement
        self._handle: JobHandle | None = None

    # --- execution -----------------------------------------------------------------------
    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        if "ds" not in context and context.get("dag_run") is not None:
            _date_macros_from_run_after(context, self.log)
        super().render_template_fields(context, jinja_env)

    def render_template(
        self, content: Any, context: Any, jinja_env: Any = None, seen_oids: set[int] | None = None
    ) -> Any:
        """Values arrive byte for byte: text without a template is not touched, and a template keeps
        its trailing newline and its ``\r\n`` (Jinja's defaults drop the one and rewrite the other)."""
        if "ds" not in context and context.get("dag_run") is not None:  # a mapped task renders through here only
            _date_macros_from_run_after(context, self.log)
        if not isinstance(content, str):
            return super().render_template(content, context, jinja_env, seen_oids)
        if not any(mark in content for mark in TEMPLATE_MARKS):
            return content
        env = (jinja_env or self.get_template_env()).overlay(keep_trailing_newline=True)
        keep_cr = "\r" in content and CR_STAND_IN not in content
        source = content.replace("\r", CR_STAND_IN) if keep_cr else content
        out = self._render(env.from_string(source), context)
        return out.replace(CR_STAND_IN, "\r") if keep_cr and isinstance(out, str) else out

    def _resolved(self, context: Any, action: str | None = None, slots: list[int] | None = None) -> ResolvedJob:
        ti = context["ti"]
        job = self._for_run(ti, action)
        if job.is_service and job.service.autoscale is not None and job.action != "watch":
            current = WatchState.load(job.name).slots
            job.slots = slots if slots is not None else (current if current is not None else initial_slots(job.service))
        return job

    def _for_run(self, ti: Any, action: str | None) -> ResolvedJob:
        return ResolvedJob.for_run(
            self.workload,
            run_key(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1)),
            run=self.run,
            setup=self.setup,
            env=self.env or {},
            workdir=self.workdir,
            secrets=resolve_secrets(self.workload),
            action=action if action is not None else (None if self.action is None else str(self.action)),
            placement=_placement(self.placement),
            registry=resolve_registry(self.workload),
        )

    def _on_first_target(
        self, job: ResolvedJob, start: Callable[[Backend], T], targets: list[str] | None = None
    ) -> tuple[str, T]:
        """Run ``start`` on the first target that accepts the job (in the spec's order, or ``targets``)."""
        refusals: list[str] = []
        for target in targets if targets is not None else self.workload.target:
            try:
                result = start(get_backend(target))
            except (SubmitError, BackendUnavailableError) as e:
                self.log.warning("target %s refused the job: %s", target, e)
                refusals.append(f"{target}: {e}")
                continue
            if refusals:
                self.log.info("falling back: %s", "; ".join(refusals))
            return target, result
        raise SubmitError("no target accepted the job:\n  " + "\n  ".join(refusals))

    @property
    def _movable(self) -> bool:
        """The job may run on any target of its list, not only the first that accepts it."""
        w = self.workload
        return len(w.target) > 1 and (w.target_policy == "first-free" or w.max_pending is not None)

    def _submit(self, job: ResolvedJob) -> tuple[JobHandle, dict[str, Any]]:
        """Submit (or find again) the job; the handle and the target choice (for the log and XCom)."""
        w = self.workload
        choice: dict[str, Any] = {"policy": w.target_policy, "targets": [str(t) for t in w.target], "seen": [],
                                  "moves": [], "left": [],
                                  "max_pending_s": w.max_pending.total_seconds() if w.max_pending else None}  # fmt: skip
        found = self._find_anywhere(job) if self._movable else None
        if found is not None:
            target, handle = found
            self.log.info("found this run's job %s on target %s: following it (no second job)", handle.job_id, target)
        else:
            order = [str(t) for t in w.target]
            if w.target_policy == "first-free" and len(order) > 1:
                order = self._first_free(choice)
            target, handle = self._on_first_target(job, lambda backend: backend.submit(job), order)
        for note in handle.notes:
            self.log.warning("%s", note)
        self.log.info("job %s running on target %s (run key %s)", handle.job_id, target, job.run_key)
        choice.update(chosen=target, since=time.time(), submitted_at=time.time())
        # where the secrets live (never their values): whoever follows the job masks them in its output
        return handle.with_secret_refs(secret_refs(self.workload)), choice

    def _first_free(self, choice: dict[str, Any]) -> list[str]:
        """The spec's targets, those with room for the job now first (target_policy first-free)."""
        from flexorch_provider import placement

        targets = [str(t) for t in self.workload.target]
        seen = placement.survey(self.workload, targets)
        for s in seen:
            self.log.info("first-free: %s", s.line)
        choice["seen"] = [s.to_dict() for s in seen]
        order = placement.order(targets, seen)
        if not any(s.fits for s in seen):
            self.log.info("first-free: no target has room for the job now; the first that accepts takes it (%s)",
                          ", ".join(targets))  # fmt: skip
        elif order[0] != targets[0]:
            self.log.info(
                "first-free: %s has room now, ahead of %s", order[0], ", ".join(targets[: targets.index(order[0])])
            )
        return order

    def _find_anywhere(self, job: ResolvedJob) -> tuple[str, JobHandle] | None:
        """This run key's live job on any target of the list (a restarted or retried task whose job
        moved, or was placed by first-free): one live job per run key across all targets. Were
        there several (a task killed in the middle of a move), the first running one stays and
        the others are cancelled."""
        from flexorch_provider.fanout import parallel

        looks = parallel([str(t) for t in self.workload.target], lambda t: get_backend(t).find(job))
        found: list[tuple[str, JobHandle]] = []
        for target, handle, error in looks:
            if error is not None:
                self.log.warning("could not look for this run's job on target %s: %s", target, error)
            elif handle is not None:
                found.append((target, handle))
        if len(found) <= 1:
            return found[0] if found else None
        states = {t: get_backend(t).poll([h])[h.job_id].state for t, h in found}
        keep = next(((t, h) for t, h in found if states[t] != JobState.PENDING), found[0])
        for other, extra in found:
            if (other, extra) != keep:
                self.log.warning("this run also had job %s on %s: cancelling it (one job per run)", extra.job_id, other)
                get_backend(other).cancel(extra)
        return keep

    def _service(self, job: ResolvedJob, context: Any) -> dict[str, Any]:
        """Services converge in the worker: idempotent, so a retry or a restarted worker just converges again."""
        ti = context["ti"]
        first = {"service": job.name, "target": self.workload.target[0], "conn": _connection_of(self.workload)}
        url = links.url_for(ti, first, service=True)
        links.push(ti, ServiceLink, url)  # while the service converges (or is watched), not only after
        ti.xcom_push(key="service", value={"service": job.name, "action": job.action})  # the page lists it as one
        if job.action == "watch":
            return self._watch()
        self.log.info("service %s: %s", job.name, job.action)
        if job.action == "undeploy":  # first: the watcher must not restore what is being stopped
            self._mark_deployed(job, False)
        target, summary = self._on_first_target(job, lambda backend: backend.service(job, self._service_log))
        if target != first["target"]:
            links.push(ti, ServiceLink, links.url_for(ti, {**first, "target": target}, service=True))
        if job.action != "undeploy":
            self._mark_deployed(job, True)
        return {**summary, "target": target, "action": job.action}

    @staticmethod
    def _mark_deployed(job: ResolvedJob, deployed: bool) -> None:
        state = WatchState.load(job.name)  # what the service's watcher keeps
        state.deployed = deployed
        state.slots = job.slots if deployed else None
        state.save()

    # --- the watcher (the <service>-watch DAG) ---------------------------------------------------
    def _service_spec(self) -> ServiceSpec | ServiceStep:
        w = self.workload
        if not isinstance(w, ServiceSpec | ServiceStep):
            raise ConfigurationError(f"action watch applies to services; {w.name} is a {w.kind} job")
        return w

    def _watch(self) -> Any:
        """Follow the service from the triggerer until it needs a change (watch_complete makes it)."""
        w = self._service_spec()
        interval = min(w.health.interval.total_seconds() if w.health else 5.0,
                       w.autoscale.interval.total_seconds() if w.autoscale else 5.0)  # fmt: skip
        self.log.info("watching service %s every %.0fs from the triggerer", w.name, interval)
        trigger = ServiceWatchTrigger(spec=w.model_dump(mode="json", exclude_none=True), target=w.target[0],
                                      interval=interval, not_before=time.time() + RESUME_HOLD_S)  # fmt: skip
        self.defer(trigger=trigger, method_name="watch_complete")

    def watch_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """One change: restore the replicas that need it and take an autoscale step, in one converge."""
        w = self._service_spec()
        state = WatchState.load(w.name)
        now = time.time()
        if not state.deployed:
            self.log.info("service %s was undeployed meanwhile: nothing to restore or scale", w.name)
            return {"service": w.name, "action": "watch", "changes": [], "history": state.history[-20:]}
        slots = list(state.slots if (w.autoscale and state.slots is not None) else initial_slots(w))
        restore = {int(k): v for k, v in (event.get("restore") or {}).items()}
        for slot, why in sorted(restore.items()):
            self.log.info("restore: replica %d %s", slot, why)
            if slot in slots:
                state.restarted(slot, now)
        scale = event.get("scale")
        if scale:
            self.log.info("%s", scale["why"])
            slots = scaled_slots(
                slots, int(scale["desired"]), {int(k): v for k, v in (scale.get("loads") or {}).items()}
            )
            state.slots = slots
        job = self._resolved(context, action="reconcile", slots=slots)
        backend = get_backend(w.target[0])
        try:
            summary = backend.service(job, self._service_log)
        finally:
            state.note({"restore": {str(k): v for k, v in restore.items()},
                        "scale": {k: scale[k] for k in ("current", "desired", "value")} if scale else None})  # fmt: skip
            state.save()
        return {**summary, "target": w.target[0], "action": "watch", "history": state.history[-20:]}

    def _service_log(self, line: str) -> None:
        self.log.info("%s", line)

    def execute(self, context: Any) -> Any:
        job = self._resolved(context)
        if job.is_service:
            return self._service(job, context)
        handle, choice = self._submit(job)
        return self._track(context, handle, choice)

    def _track(self, context: Any, handle: JobHandle, choice: dict[str, Any], new: bool = True) -> Any:
        """Follow a submitted job from the worker, then (deferrable) from the trigger. ``new``: a job
        the task has not announced yet (not one that keeps its place after max_pending)."""
        self._handle = handle
        self._announce(context["ti"], handle, choice, say=new)
        pending_until = self._pending_until(handle, choice)
        if not self.deferrable:
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
                carry={"choice": choice},
            ),
            method_name="execute_complete",
        )

    def _pending_until(self, handle: JobHandle, choice: dict[str, Any]) -> float | None:
        """When a job still pending on its target is to be moved (max_pending), if it can go anywhere."""
        w = self.workload
        if w.max_pending is None or not self._others(handle.target, choice):
            return None
        return float(choice.get("since") or time.time()) + w.max_pending.total_seconds()

    def _others(self, target: str, choice: dict[str, Any]) -> list[str]:
        """The targets a job pending on ``target`` may move to: none it has left in this try."""
        left = set(choice.get("left") or [])
        return [t for t in self.workload.target if t != target and t not in left]

    def _outcome(self, context: Any, event: dict[str, Any], choice: dict[str, Any]) -> Any:
        if event.get("status") == "pending":
            return self._move(context, event, choice)
        return self._finish(event)

    def _move(self, context: Any, event: dict[str, Any], choice: dict[str, Any]) -> Any:
        """max_pending has passed and the job has not started: cancel it where it waits and submit it to
        the next target with room, in the same try. It stays where it is when no other target has room
        now (asked again after max_pending), or when it started meanwhile (a started job never moves)."""
        from flexorch_provider import placement

        handle = JobHandle.from_dict(event["handle"])
        here, why = handle.target, event.get("message") or "pending"
        waited = _duration(time.time() - float(choice.get("submitted_at") or choice.get("since") or time.time()))
        others = self._others(here, choice)
        seen = placement.survey(self.workload, others)
        for s in seen:
            self.log.info("max_pending: %s", s.line)
        room = placement.order([s.target for s in seen if s.fits is not False], seen)
        if not room:
            self.log.warning("job %s has waited %s on %s (%s); no other target has room now (%s): it keeps its place "
                             "there, asking again in %s", handle.job_id, waited, here, why, ", ".join(others),
                             _duration(float(choice.get("max_pending_s") or 0)))  # fmt: skip
            stay = {"on": here, "reason": why, "at": time.time(), "seen": [x.to_dict() for x in seen]}
            stays = [*choice.get("stays", []), stay][-MAX_STAYS_KEPT:]
            return self._track(context, handle, {**choice, "since": time.time(), "stays": stays}, new=False)
        if not get_backend(here).withdraw(handle):
            self.log.info(
                "job %s started on %s meanwhile: it stays there (a started job never moves)", handle.job_id, here
            )
            return self._track(
                context, handle, {**choice, "left": [t for t in self.workload.target if t != here]}, new=False
            )
        self.log.warning("job %s waited %s on %s (%s): cancelled there, moving it to %s", handle.job_id, waited, here,
                         why, " or ".join(room))  # fmt: skip
        left = [*choice.get("left", []), here]
        job = self._resolved(context)
        try:
            target, new = self._on_first_target(job, lambda backend: backend.submit(job), room)
        except SubmitError as e:
            self.log.warning("no other target took the job (%s): submitting it to %s again, where it stays in this try",
                             e, here)  # fmt: skip
            target, new = here, get_backend(here).submit(job)
            left = [t for t in self.workload.target if t != here]
        self.log.info("job %s running on target %s (run key %s), moved from %s", new.job_id, target, job.run_key, here)
        move = {"from": here, "job_id": handle.job_id, "to": target, "new_job_id": new.job_id, "waited": waited,
                "reason": why, "seen": [s.to_dict() for s in seen], "at": time.time()}  # fmt: skip
        moved = {**choice, "chosen": target, "since": time.time(), "submitted_at": time.time(), "left": left,
                 "moves": [*choice.get("moves", []), move]}  # fmt: skip
        return self._track(context, new.with_secret_refs(secret_refs(self.workload)), moved)

    def _announce(self, ti: Any, handle: JobHandle, choice: dict[str, Any] | None = None, say: bool = True) -> None:
        """Say where the job runs, as soon as it is submitted: the ``job`` XCom (what the flexorch page
        lists) and the "Remote job" link, so both work while the job runs."""
        backend = get_backend(handle.target)
        try:
            where = backend.where(handle)
        except Exception as e:  # a handle the backend cannot describe still runs; the page says so
            where = {"summary": f"{handle.target} job {handle.job_id} ({e})"}
        gpus = self.workload.resources.gpus
        placed = (_placement(self.placement) or {}).get("gpus")
        public = {
            **_public(handle),
            "name": self.workload.name,
            "where": where,
            "gpus": len(placed) if placed is not None else (gpus.count * self.workload.resources.nodes if gpus else 0),
            "gpu_pool": self.workload.gpu_pool,
            "owner": self.owner,
            "team": self._team(),
            "submitted_at": (choice or {}).get("submitted_at") or time.time(),
            # how the target was chosen: policy, what each target had free, moves (max_pending)
            "choice": {k: v for k, v in (choice or {}).items() if k != "left"},
            # how to find the job again (no secret values: secret_refs are references, data is the backend's)
            "handle": {k: v for k, v in handle.to_dict().items() if k != "notes"},
        }
        ti.xcom_push(key="job", value=public)
        url = links.url_for(ti, public)
        links.push(ti, RemoteJobLink, url)
        if say:
            self.log.info("remote job: %s (%s)", where.get("summary", handle.job_id), url)

    def _team(self) -> str | None:
        """The team the job's GPU time counts against, where a policy says (submitted jobs)."""
        return None

    def _follow(
        self, handle: JobHandle, until: float | None = None, pending_until: float | None = None
    ) -> tuple[dict[str, Any] | None, LogCursor]:
        """Follow the job from the worker, streaming its log: its final event once it ends, or None
        with the log cursor reached when ``until`` (a monotonic time) comes first. Before ``until``
        a failure defers at once: the trigger has the patience (and the retries) for it; without
        ``until`` the worker is as patient as the trigger (:meth:`Follower.failed`)."""
        try:
            follower = Follower(get_backend(handle.target), handle, mask=masker_for(handle.secret_refs),
                                pending_until=pending_until)  # fmt: skip
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
                left = until - time.monotonic()
                if left <= 0 and (looked_last or not step.wrote):
                    return None, follower.cursor
                if left <= 0:  # new lines since the poll: one more look, a job that just ended needs no trigger
                    looked_last = True
                    continue
                interval = min(interval, PRE_DEFER_POLL_S, left)
            time.sleep(interval)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        carry = event.get("carry") or {}
        return self._outcome(context, event, carry.get("choice") or {})

    def _finish(self, event: dict[str, Any]) -> dict[str, Any]:
        handle = JobHandle.from_dict(event["handle"])
        self._handle = None
        if event.get("status") in ("success", "failed"):
            try:  # before Airflow records it: a try after this one (a cleared task) runs the job anew
                get_backend(handle.target).claim(handle)
            except Exception as e:
                self.log.warning("could not mark job %s as recorded (%s): a later try may adopt it", handle.job_id, e)
        if event.get("status") == "success":
            self.log.info("job %s on %s succeeded", handle.job_id, handle.target)
            return {**_public(handle), "state": event.get("state"), "exit_code": event.get("exit_code")}
        failed = event.get("status") == "failed"
        what = f" {event.get('state')}:" if failed else ":"
        summary = f"job {handle.job_id} on {handle.target}{what} {event.get('message')}"
        # the reason as a log line (the job's last lines are just above): the task log in the UI and
        # the REST API shows only "Task failed with exception" for the exception itself
        self.log.error("%s", summary)
        if failed:
            raise JobFailedError(summary, exit_code=event.get("exit_code"), log_tail=event.get("log_tail"))
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


def _placement(value: Any) -> dict[str, Any] | None:
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


def _date_macros_from_run_after(context: Any, log: Any) -> None:
    """A run without a logical date (a manual run in Airflow 3) has no ``{{ ds }}``.

    Specs use ``{{ ds }}`` to mean "the day this run is about"; for a manual run that is the
    day it was requested, so the date macros come from the run's ``run_after``.
    """
    run_after = getattr(context["dag_run"], "run_after", None)
    if run_after is None:
        return
    ts = run_after.isoformat()
    context.update(
        {
            "ds": run_after.strftime("%Y-%m-%d"),
            "ds_nodash": run_after.strftime("%Y%m%d"),
            "ts": ts,
            "ts_nodash": run_after.strftime("%Y%m%dT%H%M%S"),
            "ts_nodash_with_tz": ts.replace("-", "").replace(":", ""),
        }
    )
    log.info("this run has no logical date (a manual run): {{ ds }} and {{ ts }} use its run_after %s", ts)


def scaled_slots(slots: list[int], desired: int, loads: dict[int, float]) -> list[int]:
    """The replica slots after a step to ``desired``: up adds the lowest free numbers; down drops the
    replicas with the least load first (a replica whose load is unknown counts as busy)."""
    slots = sorted(slots)
    if desired > len(slots):
        free = (n for n in range(desired + len(slots)) if n not in slots)
        return sorted([*slots, *(next(free) for _ in range(desired - len(slots)))])
    keep = sorted(slots, key=lambda s: (loads.get(s, float("inf")), s), reverse=True)[:desired]
    return sorted(keep)


def _connection_of(workload: Any) -> str | None:
    """The Airflow connection a workload's target runs through (its link template may be there)."""
    target = workload.target[0]
    options = getattr(workload, target, None)
    conn = getattr(options, "connection", None)
    return conn if isinstance(conn, str) else None


def _duration(seconds: float) -> str:
    """``75`` → ``1m15s``."""
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _public(handle: JobHandle) -> dict[str, Any]:
    """What goes to XCom: identifiers only, never secrets."""
    return {"job_id": handle.job_id, "target": handle.target, "run_key": handle.run_key}
