"""The submit DAGs: the generic DAG that runs a spec sent with ``flexorch submit``, one per team.

With a team policy each team has its own, ``flexorch-submit-<team>``: Airflow shows a DAG's runs,
logs and XComs to whoever may read that DAG, so a team's submissions are kept from other teams by
per-DAG permissions (the team's ``airflow_roles`` become the DAG's ``access_control``), and its
``check`` refuses a user of another team. Without teams there is one, ``flexorch-submit``.

A run's conf holds the spec text (``{"spec": TEXT, "step": NAME, "set": [...]}``). ``check``
validates it again on the server, applies the team policy to the user the API authenticated
(``triggering_user_name``), and returns one FlexOperator argument set per job; ``run`` is
mapped over them: a job is one map index, a pipeline one per step (named after the step),
each starting once the steps it comes after have succeeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flexorch_provider.submission import MAX_SETS, MAX_SPEC_CHARS, submit_dag_id

SUBMIT_TAG = "flexorch:submit"
DOC = """# DAG_ID

Runs WHOSE specs sent with `flexorch submit SPEC` (or a REST trigger with conf
`{"spec": "<the spec's YAML>", "step": null, "set": ["key=value"]}`). The spec is validated
again here and checked against the team policy (`flexorch_policy.yaml` beside the specs, or
`$FLEXORCH_POLICY`); each job runs as one map index of
`run` (a pipeline: one per step, named after it). The spec text is in the run's conf.
"""


# what a team's roles may do on its submit DAG: read it and its runs, trigger and stop runs
TEAM_GRANTS = {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}


def build_submit_dag(policy_file: Path | None, team: str | None = None, roles: list[str] | None = None) -> Any:
    """The submit DAG of ``team`` (None: the one DAG of a server without teams); ``roles`` become its
    ``access_control``."""
    from airflow.sdk import DAG, Param

    from flexorch_provider.operators.submit import SubmitCheckOperator, SubmittedStepOperator

    dag_id = submit_dag_id(team)
    policy = str(policy_file) if policy_file else None
    with DAG(
        dag_id=dag_id,
        dag_display_name=f"flexorch submit ({team})" if team else "flexorch submit",
        description=f"Specs team {team} submitted with `flexorch submit`, checked against its policy"
        if team
        else "Specs submitted with `flexorch submit`, checked against the team policy",
        schedule=None,
        catchup=False,
        tags=["flexorch", SUBMIT_TAG],
        max_active_runs=256,
        doc_md=DOC.replace("DAG_ID", dag_id).replace("WHOSE", f"team {team}'s" if team else "the"),
        access_control={role: TEAM_GRANTS for role in roles} if roles else None,
        default_args={"owner": "flexorch"},
        params={
            "spec": Param("", type="string", maxLength=MAX_SPEC_CHARS, description="The spec's YAML text."),
            "step": Param(None, type=["null", "string"], description="One step of a pipeline spec."),
            "set": Param(
                [], type="array", maxItems=MAX_SETS, items={"type": "string"}, description="Overrides, KEY=VALUE."
            ),
        },
    ) as dag:
        check = SubmitCheckOperator(task_id="check", policy_file=policy, submit_team=team)
        SubmittedStepOperator.partial(
            task_id="run",
            map_index_template="{{ task.step_label }}",
            retries=0,
            policy_file=policy,
            submit_team=team,
        ).expand_kwargs(check.output)
    return dag


def build_submit_dags(policy_file: Path | None, policy: Any = "read") -> dict[str, Any]:
    """Every submit DAG the policy gives: one per team, or the one DAG without teams (a missing or
    invalid policy too: its check then refuses every submission, saying why). ``policy``: the
    policy already read from ``policy_file`` (None: none or invalid), else it is read here."""
    from flexorch_provider.exceptions import SpecError
    from flexorch_provider.policy import load_policy

    if policy == "read":
        try:
            policy = load_policy(policy_file)
        except SpecError:
            policy = None
    teams = [(name, team.airflow_roles) for name, team in policy.teams.items()] if policy is not None else []
    dags = {}
    for team, roles in teams or [(None, None)]:
        dag = build_submit_dag(policy_file, team, roles)
        dags[dag.dag_id] = dag
    return dags
