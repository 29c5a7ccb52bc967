"""The ``flexorch-submit`` DAG: the one generic DAG that runs a spec sent with ``flexorch submit``.

A run's conf holds the spec text (``{"spec": TEXT, "step": NAME, "set": [...]}``). ``check``
validates it again on the server, applies the team policy to the user the API authenticated
(``triggering_user_name``), and returns one FlexOperator argument set per job; ``run`` is
mapped over them: a job is one map index, a pipeline one per step (named after the step),
each starting once the steps it comes after have succeeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flexorch_provider.submission import MAX_SETS, MAX_SPEC_CHARS, SUBMIT_DAG_ID

SUBMIT_TAG = "flexorch:submit"
DOC = """# flexorch-submit

Runs specs sent with `flexorch submit SPEC` (or a REST trigger with conf
`{"spec": "<the spec's YAML>", "step": null, "set": ["key=value"]}`). The spec is validated
again here and checked against the team policy (`flexorch_policy.yaml` beside the specs, or
`$FLEXORCH_POLICY`); each job runs as one map index of
`run` (a pipeline: one per step, named after it). The spec text is in the run's conf.
"""


def build_submit_dag(policy_file: Path | None) -> Any:
    from airflow.sdk import DAG, Param

    from flexorch_provider.operators.submit import SubmitCheckOperator, SubmittedStepOperator

    with DAG(
        dag_id=SUBMIT_DAG_ID,
        dag_display_name="flexorch submit",
        description="Specs submitted with `flexorch submit`, checked against the team policy",
        schedule=None,
        catchup=False,
        tags=["flexorch", SUBMIT_TAG],
        max_active_runs=256,
        doc_md=DOC,
        default_args={"owner": "flexorch"},
        params={
            "spec": Param("", type="string", maxLength=MAX_SPEC_CHARS, description="The spec's YAML text."),
            "step": Param(None, type=["null", "string"], description="One step of a pipeline spec."),
            "set": Param(
                [], type="array", maxItems=MAX_SETS, items={"type": "string"}, description="Overrides, KEY=VALUE."
            ),
        },
    ) as dag:
        check = SubmitCheckOperator(task_id="check", policy_file=str(policy_file) if policy_file else None)
        SubmittedStepOperator.partial(
            task_id="run",
            map_index_template="{{ task.step_label }}",
            retries=0,
            policy_file=str(policy_file) if policy_file else None,
        ).expand_kwargs(check.output)
    return dag
