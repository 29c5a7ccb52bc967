"""``flexorch policy roles``: the auth-manager roles a team needs to submit through its own DAG.

Airflow shows a DAG's runs, task logs and XComs to whoever may read that DAG, so each team submits
through ``flexorch-submit-<team>`` and only the team's roles may read or change it. With an auth
manager that has per-DAG permissions (FAB), a team's ``airflow_roles`` become its submit DAG's
``access_control`` (read and edit the DAG, read and create its runs); these commands create the
roles with what they need besides: reading and stopping runs, task instances, their logs and
XComs, which FAB checks together with the per-DAG permission (a role reads the runs of the DAGs
it may read, and of no other). Run them before the DAGs are parsed: FAB refuses an
``access_control`` that names a role that does not exist.
"""

from __future__ import annotations

import shlex

from flexorch_provider.policy.model import Policy
from flexorch_provider.submission import submit_dag_id

# (resource, actions) every team role needs beside the per-DAG grants of its submit DAG
ROLE_PERMISSIONS = (
    ("DAG Runs", ("can_read", "can_edit")),  # follow a run, `flexorch cancel` (marks it failed)
    ("Task Instances", ("can_read",)),
    ("Task Logs", ("can_read",)),
    ("XComs", ("can_read",)),  # the `job` record: where the job runs
    ("Website", ("can_read",)),  # the Airflow UI
)


def role_commands(policy: Policy) -> list[str]:
    """Shell lines (``airflow roles ...``) creating every team's roles; a comment for a team
    without ``airflow_roles`` (its submit DAG is granted by hand, or by nobody)."""
    lines: list[str] = []
    for name, team in policy.teams.items():
        dag = submit_dag_id(name)
        if not team.airflow_roles:
            lines.append(f"# team {name}: no airflow_roles; grant {dag} by hand (DAG:{dag}: can_read, can_edit)")
            continue
        for role in team.airflow_roles:
            lines.append(f"# team {name}: {role} may submit through {dag} (its access_control)")
            lines.append(shlex.join(["airflow", "roles", "create", role]))
            for resource, actions in ROLE_PERMISSIONS:
                lines.append(shlex.join(["airflow", "roles", "add-perms", role, "-r", resource, "-a", *actions]))
    return lines
