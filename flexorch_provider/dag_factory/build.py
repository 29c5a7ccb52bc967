"""Plans → Airflow DAG objects, and the placeholder DAG that shows an invalid spec's error."""

from __future__ import annotations

import re
from typing import Any

from flexorch_provider.dag_factory.plan import DagPlan
from flexorch_provider.exceptions import SpecError, SpecProblem
from flexorch_provider.spec.models import SpecModel

INVALID_TAG = "flexorch:invalid-spec"


def build_dag(plan: DagPlan, spec: SpecModel, code_root: str | None = None) -> Any:
    """One DAG from its plan; each task runs (a step of) the spec: a job with FlexOperator, a service's
    action with FlexServiceOperator. ``code_root``: the spec file's folder (``code.path`` is relative to it)."""
    from airflow.sdk import DAG

    from flexorch_provider.operators.flex import FlexOperator
    from flexorch_provider.operators.service import FlexServiceOperator

    with DAG(**plan.dag_kwargs()) as dag:
        tasks: dict[str, Any] = {}
        for t in plan.tasks:
            if t.service:
                tasks[t.task_id] = FlexServiceOperator(
                    task_id=t.task_id, spec=spec, step=t.step, action=t.action, code_root=code_root
                )
            else:
                tasks[t.task_id] = FlexOperator(task_id=t.task_id, spec=spec, step=t.step, code_root=code_root)
        for upstream, downstream in plan.edges:
            tasks[upstream] >> tasks[downstream]
    return dag


def invalid_dag_id(name: str | None, relpath: str) -> str:
    """The spec's own name when it can be read (its DAG keeps its id and history), else one from the path."""
    if name:
        return name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", relpath.rsplit(".", 1)[0]).strip("_.-") or "spec"
    return f"flexorch-invalid-{slug}"[:250]


def format_problems(problems: list[SpecProblem]) -> str:
    return "\n".join(str(p) for p in problems)


def build_invalid_dag(dag_id: str, relpath: str, problems: list[SpecProblem]) -> Any:
    """A DAG that stands in for a spec that does not validate.

    It is listed in the UI (display name starts with "invalid spec"), its docs show every
    problem with file, line and field, and its only task fails with the same text. It has no
    schedule, so nothing runs until the spec is fixed; the next parse replaces it.
    """
    from airflow.sdk import DAG

    from flexorch_provider.operators.invalid_spec import InvalidSpecOperator

    text = format_problems(problems)
    doc = "\n".join(
        [
            f"# Invalid flexorch spec: `{relpath}`",
            "",
            "This spec does not validate, so its DAG cannot be built. Fix the file (or run",
            f"`flexorch validate {relpath}`); the DAG comes back on the next parse.",
            "",
            "```",
            text,
            "```",
        ]
    )
    with DAG(
        dag_id=dag_id,
        dag_display_name=f"invalid spec: {relpath}",
        description=f"INVALID SPEC {relpath}: {problems[0].message if problems else 'see docs'}"[:1000],
        schedule=None,
        tags=["flexorch", INVALID_TAG],
        doc_md=doc,
    ) as dag:
        InvalidSpecOperator(task_id="spec_error", problems=text)
    return dag


def problems_of(error: Exception, relpath: str) -> list[SpecProblem]:
    if isinstance(error, SpecError):
        return list(error.problems)
    return [SpecProblem(relpath, None, "", f"{type(error).__name__}: {error}")]
