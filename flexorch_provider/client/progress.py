"""Follow a submitted run from the REST API: each task's log lines as they arrive (prefixed with
the step), where each job runs, and the run's outcome."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from flexorch_provider.client.api import Api
from flexorch_provider.records import JobRecord

FINISHED = ("success", "failed")
SOURCES_GROUP = "::group::Log message source details"
SHOWN_STATES = (
    "running",
    "deferred",
    "success",
    "failed",
    "up_for_retry",
    "up_for_reschedule",
    "skipped",
    "upstream_failed",
)


# whose records a submitter sees: the operators' and triggers' (the job's lines, flexorch's
# messages), and every warning or error; not Airflow's own bookkeeping (bundles, DagBag, XCom)
OWN_LOGGERS = ("airflow.task.operators.", "airflow.triggers.", "flexorch_provider.")


def worth_showing(entry: dict[str, Any]) -> bool:
    logger = entry.get("logger")
    if logger is None:
        return True  # a plain text log line
    level = str(entry.get("level", "")).lower()
    return (str(logger).startswith(OWN_LOGGERS) and "dag_factory" not in str(logger)) or level in (
        "warning",
        "error",
        "critical",
    )


def shown_text(entry: dict[str, Any]) -> str:
    """The record's text; an error with an exception says which (Airflow keeps it beside the text)."""
    line = str(entry.get("event", ""))
    detail = entry.get("error_detail")
    if detail and str(entry.get("level", "")).lower() in ("error", "critical"):
        import ast

        try:
            first = ast.literal_eval(detail)[0] if isinstance(detail, str) else detail[0]
            line += f": {first.get('exc_type')}: {first.get('exc_value')}"
        except (ValueError, SyntaxError, IndexError, KeyError, TypeError, AttributeError):
            pass
    return line


def new_lines(
    entries: list[dict[str, Any]], done: collections.Counter[tuple[str, str]], own_only: bool = False
) -> list[str]:
    """The log lines in ``entries`` not yet in ``done`` (which they are then added to); with
    ``own_only``, only records :func:`worth_showing`.

    Lines are known by timestamp and text, not by position: the group of source lines at the top
    of a task log grows and shrinks as the task moves between worker and triggerer. That group
    and Airflow's other log-folding markers say nothing to someone watching a run."""
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    new = []
    in_sources = False
    for entry in entries:
        stamp, line = entry.get("timestamp"), str(entry.get("event", ""))
        if line == SOURCES_GROUP or (in_sources and line != "::endgroup::"):
            in_sources = True
            continue
        if line.startswith("::"):
            in_sources = False
            continue
        if own_only and not worth_showing(entry):
            continue
        key = (str(stamp or ""), line)
        seen[key] += 1
        if seen[key] > done[key]:
            done[key] += 1
            new.append(shown_text(entry) if own_only else line)
    return new


def label_of(ti: dict[str, Any], labels: list[str] | None = None) -> str:
    """``check``, or a job's step (spec) name from the check's plan, else ``run[N]``."""
    if ti.get("task_id") != "run":
        return str(ti.get("task_id"))
    index = int(ti.get("map_index", -1))
    if labels and 0 <= index < len(labels):
        return labels[index]
    return f"run[{index}]"


def plan_labels(api: Api, run_id: str) -> list[str] | None:
    """The step (or spec) name of each map index of ``run``, from the check task's plan."""
    plan = api.xcom(run_id, "check", "return_value")
    if not isinstance(plan, list):
        return None
    return [str(p.get("step_label") or f"run[{i}]") if isinstance(p, dict) else f"run[{i}]" for i, p in enumerate(plan)]


class RunFollower:
    """Prints what is new in one run at each :meth:`step`; ``tail`` keeps the last lines per task."""

    def __init__(self, api: Api, run_id: str, say: Callable[[str], None], tail: int | None = None) -> None:
        self.api = api
        self.run_id = run_id
        self.say = say
        self.tail = tail
        self.printed: dict[tuple[str, int, int], collections.Counter[tuple[str, str]]] = {}
        self.jobs: dict[tuple[str, int], JobRecord] = {}
        self.first_line_at: float | None = None
        self.labels: list[str] | None = None

    def step(self) -> str | None:
        """Print what is new; the run's state once it has finished, else None."""
        state = str(self.api.run(self.run_id).get("state"))
        tis = self.api.task_instances(self.run_id)
        if self.labels is None and any(t.get("task_id") == "run" for t in tis):
            self.labels = plan_labels(self.api, self.run_id)
        for ti in sorted(tis, key=lambda t: (t.get("task_id") != "check", t.get("map_index") or -1)):
            self._show(ti)
        return state if state in FINISHED else None

    def _show(self, ti: dict[str, Any]) -> None:
        task_id, index = str(ti["task_id"]), int(ti.get("map_index", -1))
        if ti.get("state") not in SHOWN_STATES:
            return
        label = label_of(ti, self.labels)
        if task_id == "run" and (task_id, index) not in self.jobs:
            job = JobRecord.from_dict(self.api.xcom(self.run_id, task_id, "job", index))
            if job is not None:
                self.jobs[(task_id, index)] = job
                self.say(f"==> {label}: job {job.job_id} on {job.target}")
        tries = int(ti.get("try_number") or 0)
        for attempt in range(1, tries + 1):
            done = self.printed.setdefault((task_id, index, attempt), collections.Counter())
            if attempt < tries and done.total():
                continue  # an earlier try, already shown
            lines = new_lines(self.api.log(self.run_id, task_id, attempt, index), done, own_only=True)
            if self.tail is not None:
                lines = lines[-self.tail :]
            prefix = label if attempt == 1 else f"{label} try {attempt}"
            for line in lines:
                if self.first_line_at is None:
                    self.first_line_at = time.monotonic()
                self.say(f"[{prefix}] {line}")

    def follow(self, interval: float = 1.0, timeout: float | None = None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.step()
            if state is not None:
                self.step()  # the last lines: a task's final records may land after its state
                return state
            if deadline is not None and time.monotonic() > deadline:
                return "timed out"
            time.sleep(interval)
