"""The two tasks of the ``flexorch-submit`` DAG (see ``dag_factory/submit.py``).

- :class:`SubmitCheckOperator` (``check``): the run's conf → the spec validated again on the
  server, its templates checked, the submitting user's team policy applied; its return value is
  one set of FlexOperator arguments per job (a pipeline: per step, in dependency order).
- :class:`SubmittedStepOperator` (``run``, mapped over that list): a FlexOperator that first
  waits, in the triggerer, for the steps it comes after, and records its GPU time in the ledger.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import BaseOperator

from flexorch_provider.backends.base import JobHandle, ResolvedJob
from flexorch_provider.code import Bundle, bundle_for
from flexorch_provider.exceptions import JobFailedError, PolicyError, SpecError
from flexorch_provider.operators.base import date_macros_from_run_after
from flexorch_provider.operators.flex import RESUME_HOLD_S, FlexOperator
from flexorch_provider.policy import Ledger, gpus_of
from flexorch_provider.policy.admission import admit, plan
from flexorch_provider.services import actions
from flexorch_provider.submission import parse_submission
from flexorch_provider.triggers.steps import StepsDoneTrigger, ended_states

RETRIES_KEY = "flexorch_retries"  # XCom: how many times this task instance submitted its job again
# FlexOperator's own arguments, which the check's plan never sets: in the run task's arguments
# they can only come from an edited XCom. (BaseOperator's arguments cannot come from it at all:
# partial() holds them, and expand_kwargs refuses a key partial() already has.)
NOT_FROM_XCOM = ("target", "placement", "deferrable", "poll_interval", "defer_after")


class SubmitCheckOperator(BaseOperator):
    """Validate a submission and apply the policy; returns the ``run`` task's mapped arguments.

    :param policy_file: the policy (``flexorch_policy.yaml``); none there (or unreadable): every
        submission is refused, saying how to write one.
    :param submit_team: the team whose submit DAG this is: a user of another team is refused (None:
        the one submit DAG of a server without teams).
    """

    ui_color = "#fff3cd"

    def __init__(self, *, policy_file: str | None = None, submit_team: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.policy_file = policy_file
        self.submit_team = submit_team

    def execute(self, context: Any) -> list[dict[str, Any]]:
        dag_run = context["dag_run"]
        user = getattr(dag_run, "triggering_user_name", None)
        try:
            sub = parse_submission(dict(dag_run.conf or {}))
        except SpecError as e:
            for problem in e.problems:
                self.log.error("%s", problem)
            raise
        kinds = ", ".join(
            f"{s} ({j.kind} on {'/'.join(j.target)})" if s else f"{j.kind} on {'/'.join(j.target)}" for s, j in sub.jobs
        )
        self.log.info("submission by %s: spec %s (owner %s): %s", user or "an unknown user", sub.name, sub.owner, kinds)
        account = admit(sub, user, dag_run.run_id, (self.policy_file, self.submit_team), run_task_states, self.log)
        self._check_code(sub)
        return plan(sub, account)

    def _check_code(self, sub: Any) -> None:
        """Every job with ``code:`` came with its uploaded bundle, and the code store has it."""
        from flexorch_provider import code_store

        problems = []
        for step, job in sub.jobs:
            if job.code is None or job.code.git is not None:  # from git: the worker fetches it
                continue
            digest, who = sub.code_digest(step), f"step {step}" if step else sub.name
            if digest is None:
                problems.append(
                    f"{who} has code: {job.code.path!r}, but the submission carries no code: submit it with the "
                    "flexorch CLI (which uploads the folder), or with --no-code to run without it"
                )
            elif not code_store.has(digest):
                problems.append(f"{who}: its code (bundle {digest[:12]}) is not in the code store: submit again")
            else:
                self.log.info("%s runs with its uploaded code, bundle %s", who, digest[:12])
        if problems:
            for problem in problems:
                self.log.error("refused: %s", problem)
            raise PolicyError(problems)


def run_task_states(dag_id: str, runs: list[str]) -> dict[str, dict[str, Any]]:
    """The states of the ``run`` tasks of ``runs`` (keys ``run_<map index>``), through the Task SDK."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    return dict(RuntimeTaskInstance.get_task_states(dag_id=dag_id, task_ids=["run"], run_ids=runs) or {})


class SubmittedStepOperator(FlexOperator):
    """One job of a submission: waits for the steps it comes after, then runs like any FlexOperator
    (a service step is deployed, as FlexServiceOperator would).

    :param after: map indexes of this task (steps of the same run) that must succeed first.
    :param account: ``{team, user, run}``: the team the job's GPU time goes to in the ledger.
    :param step_label: the step's (or spec's) name, shown as the map index in the UI.
    :param policy_file: the policy the check applied (set by the DAG, not by the check's XCom).
    :param submit_team: the team whose submit DAG this is (set by the DAG, as ``policy_file``).

    Everything but ``policy_file`` and ``submit_team`` comes from ``check``'s XCom; before it runs anything the task
    rebuilds those arguments from the run's conf and its triggering user and refuses any that
    differ (:func:`flexorch_provider.policy.admission.verify`).
    """

    accepts_services = True

    def __init__(
        self,
        *,
        after: list[int] | None = None,
        account: dict[str, Any] | None = None,
        step_label: str = "",
        policy_file: str | None = None,
        submit_team: str | None = None,
        **kwargs: Any,
    ) -> None:
        # what check's plan gave, as given (verified against the conf before anything runs)
        self._given = {
            "spec": kwargs.get("spec"),
            "step": kwargs.get("step"),
            "overrides": kwargs.get("overrides"),
            "step_label": step_label,
            "after": after,
            "account": account,
        }
        self._not_for_xcom = sorted(k for k in NOT_FROM_XCOM if k in kwargs)
        super().__init__(**kwargs)
        self.policy_file = policy_file
        self.submit_team = submit_team
        self.after = [int(i) for i in after or []]
        self.account = dict(account) if account else None
        self.step_label = step_label or self.workload.name
        self._try = 0
        self._retried = 0

    def render_template(
        self, content: Any, context: Any, jinja_env: Any = None, seen_oids: set[int] | None = None
    ) -> Any:
        """A submitted spec's templates are rendered by flexorch's own sandbox with plain values only,
        never by Airflow's environment (its context reaches ``os``, Variables, Connections and files):
        whatever reached this task is held to the rules ``check`` applied
        (:mod:`flexorch_provider.plain_templates`)."""
        from flexorch_provider.plain_templates import TemplateRefused, plain_values, render_all

        if "ds" not in context and context.get("dag_run") is not None:
            date_macros_from_run_after(context, self.log)
        try:
            return render_all(content, plain_values(context))
        except TemplateRefused as e:
            self.log.error("refused: %s", e)
            raise

    def code_bundle(self) -> Bundle | None:
        """A submitted job's code is the bundle its submit uploaded (never a folder of this worker)."""
        if self.workload.code is None:
            return None
        if self.workload.code.git is not None:  # https only (the submission's check): fetched here
            return bundle_for(self.workload, None)
        from flexorch_provider import code_store

        digest = getattr(self, "_code_digest", None)
        if digest is None:
            raise PolicyError([f"{self.step_label} has code:, but its run carries no uploaded code: submit again"])
        return code_store.get(digest)

    def _read_code(self, context: Any) -> None:
        """The bundle the run's conf names for this job (the check made sure the store has it)."""
        code = dict(context["dag_run"].conf or {}).get("code") or {}
        step = self._given.get("step")
        self._code_digest = code.get(step or "") if isinstance(code, dict) else None

    def _verify(self, context: Any) -> None:
        """Refuse to run anything but what the run's conf, its triggering user and the policy give."""
        from flexorch_provider.policy.admission import verify

        dag_run, ti = context["dag_run"], context["ti"]
        try:
            if self._not_for_xcom:
                raise PolicyError(
                    [
                        f"the run task was given {', '.join(self._not_for_xcom)}, which no check sets "
                        "(an edited XCom?): refused"
                    ]
                )
            try:
                sub = parse_submission(dict(dag_run.conf or {}))
            except SpecError as e:
                raise PolicyError([f"the run's conf no longer validates: {e}"]) from None
            self.account = verify(
                self._given,
                sub,
                int(ti.map_index),
                getattr(dag_run, "triggering_user_name", None),
                dag_run.run_id,
                (self.policy_file, self.submit_team),
                again=self._try > 1,
                states_of=run_task_states,
            )
        except PolicyError as e:
            for problem in e.refusals:
                self.log.error("refused: %s", problem)
            raise
        self._verified = True

    def execute(self, context: Any) -> Any:
        self._try = int(getattr(context["ti"], "try_number", 0) or 0)
        self._read_code(context)
        if not getattr(self, "_verified", False):
            self._verify(context)
        if self.after:
            ti = context["ti"]
            states = ended_states(ti.dag_id, ti.run_id, ti.task_id, self.after)
            if states is None:
                self.log.info("waiting for steps %s to end", ", ".join(map(str, self.after)))
                hold = time.time() + RESUME_HOLD_S
                trigger = StepsDoneTrigger(ti.dag_id, ti.run_id, ti.task_id, self.after, not_before=hold)
                self.defer(trigger=trigger, method_name="execute_after_wait")
            self._go_or_skip(states)
        return self._run(context, fresh=True)

    def execute_after_wait(self, context: Any, event: dict[str, Any]) -> Any:
        self._go_or_skip({int(k): v for k, v in (event.get("states") or {}).items()})
        self.after = []
        return self.execute(context)

    # --- retries: a mapped task's retries are fixed when the DAG is parsed, so the spec's are done here
    def _run(self, context: Any, fresh: bool = False) -> Any:
        """``fresh``: the try's first run of the job (no retry done yet: the count starts at 0, written
        now, so that every later read finds it instead of a missing XCom the API logs as an error)."""
        if fresh:
            self._retried = 0
            context["ti"].xcom_push(key=RETRIES_KEY, value=0)
        else:
            self._retried = self._retries_done(context)
        if self.workload.is_service:  # a submitted service (the team's policy allows services)
            return self._deploy_for_its_lifetime(context)
        try:
            return super().execute(context)
        except JobFailedError as e:
            self._retry_or_raise(context, e)
            raise

    # --- a submitted service lives as long as its run task ------------------------------------
    def _deploy_for_its_lifetime(self, context: Any) -> Any:
        """Deploy, then hold the service (deferred) for its lifetime, its ``timeout`` (none: until
        the run is cancelled): the run counts as live and the service's GPUs are in the ledger all
        that time. The lifetime's end undeploys it here; a cancel, in the trigger's ``on_kill``."""
        from flexorch_provider.triggers.service_lease import ServiceLeaseTrigger

        ti = context["ti"]
        job = self.resolve_for_run(ti, action="deploy")
        job.slots = actions.slots_for(self.workload)
        summary = actions.converge(job, ti, self.log)
        self._ledger_start(job.run_key, job.timeout_s)
        lifetime = job.timeout_s
        until = time.time() + lifetime if lifetime else None
        self.log.info(
            "service %s deployed on %s; it runs %s, or until the run is cancelled (`flexorch cancel`), then is undeployed",
            self.workload.name,
            summary.get("target"),
            f"for its timeout, {int(lifetime)}s" if lifetime else "with no timeout",
        )
        given: dict[str, Any] = dict(self._given)
        trigger = ServiceLeaseTrigger(
            given["spec"], given["step"], given["overrides"], job.run_key, until, not_before=time.time() + RESUME_HOLD_S
        )
        self.defer(trigger=trigger, method_name="execute_lifetime_end")

    def execute_lifetime_end(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        self._read_code(context)
        ti = context["ti"]
        self._try = int(getattr(ti, "try_number", 0) or 0)
        self._retried = self._retries_done(context)
        job = self.resolve_for_run(ti, action="undeploy")
        job.slots = actions.slots_for(self.workload)
        self.log.info("service %s: its lifetime (timeout) has ended: undeploying it", self.workload.name)
        summary = actions.converge(job, ti, self.log)
        self.on_end(job.run_key)
        return summary

    def execute_recover(self, context: Any, event: Any = None) -> Any:
        """A recovery (retries.recover) submits the job again: checked against the conf first, as a start is."""
        self._try = int(getattr(context["ti"], "try_number", 0) or 0)
        self._read_code(context)
        self._retried = self._retries_done(context)
        if not getattr(self, "_verified", False):
            self._verify(context)
        return super().execute_recover(context, event)

    def execute_retry(self, context: Any, event: Any = None) -> Any:
        self._try = int(getattr(context["ti"], "try_number", 0) or 0)
        self._read_code(context)
        return self._run(context)

    def _retries_done(self, context: Any) -> int:
        ti = context["ti"]
        return int(ti.xcom_pull(task_ids=ti.task_id, key=RETRIES_KEY, map_indexes=ti.map_index) or 0)

    def _retry_or_raise(self, context: Any, error: JobFailedError) -> None:
        """Submit the job again after the spec's retry delay (deferred: no worker slot meanwhile),
        while the spec's retries last; else return (the caller raises)."""
        from datetime import timedelta

        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        done = self._retries_done(context)
        if done >= self.workload.retries.count:
            return
        delay = max(self.workload.retries.delay.total_seconds(), RESUME_HOLD_S)
        context["ti"].xcom_push(key=RETRIES_KEY, value=done + 1)
        self.log.warning(
            "retry %d of %d in %ds: %s", done + 1, self.workload.retries.count, int(delay), str(error).splitlines()[0]
        )
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=delay)), method_name="execute_retry")

    def _go_or_skip(self, states: dict[int, str] | None) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        bad = {i: s for i, s in (states or {}).items() if s != "success"}
        if bad:
            which = ", ".join(f"run[{i}] {s}" for i, s in bad.items())
            self.log.warning("step %s does not run: a step it comes after did not succeed (%s)", self.step_label, which)
            raise AirflowSkipException(f"a step it comes after did not succeed ({which})")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        self._try = int(getattr(context["ti"], "try_number", 0) or 0)
        self._read_code(context)
        self._retried = self._retries_done(context)
        try:
            return super().execute_complete(context, event)
        except JobFailedError as e:
            self._retry_or_raise(context, e)
            raise

    # --- the ledger: GPU time of each try of each job ---------------------------------------
    def on_submit(self, job: ResolvedJob, handle: JobHandle) -> None:
        self._ledger_start(handle.run_key, job.timeout_s)

    def _ledger_start(self, run_key: str, cap: float | None) -> None:
        """One try of a job (or a service's lifetime) starts: its GPUs (every node, host and replica)
        count from now, up to ``cap`` seconds."""
        if self.account:
            Ledger().append(
                {
                    "t": "start",
                    "run": self.account["run"],
                    "job": run_key,
                    "try": self._ledger_try,
                    "team": self.account["team"],
                    "user": self.account.get("user"),
                    "gpus": gpus_of(self.workload),
                    "cap": cap,
                }
            )

    def team(self) -> str | None:
        return str(self.account["team"]) if self.account else None

    def on_end(self, run_key: str) -> None:
        if self.account and run_key:
            Ledger().append({"t": "end", "run": self.account["run"], "job": run_key, "try": self._ledger_try})

    @property
    def _ledger_try(self) -> str:
        """Each submit of the job: the task's try, the retries done in it, and (from the first on) the
        recoveries in it, so every attempt's GPU time counts on its own."""
        restarts = int((getattr(self, "_restart", None) or {}).get("count") or 0)
        return f"{self._try}.{self._retried}" + (f".{restarts}" if restarts else "")
