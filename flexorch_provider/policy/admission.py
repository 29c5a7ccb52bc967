"""Admitting a submission, and checking again what the ``run`` task is about to run.

``check`` (:func:`admit`) turns the run's conf and the user Airflow authenticated into the plan of
the ``run`` task: one argument set per job, with the team the GPU time is charged to. The ``run``
task gets that plan through XCom, which a ``user``-role account can edit over the REST API, and
a cleared ``run`` runs without ``check``. So each job verifies itself (:func:`verify`): it rebuilds
the plan from the conf and the triggering user, refuses arguments that differ, applies the team's
static rules again, and, on a try after the first (a cleared task), the budget and the
concurrency limit too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flexorch_provider.exceptions import PolicyError
from flexorch_provider.policy.ledger import Ledger, period_start
from flexorch_provider.policy.model import Policy, Team, load_policy
from flexorch_provider.policy.rules import budget_refusal, concurrency_refusal, static_refusals
from flexorch_provider.submission import Submission, submit_dag_id

NO_POLICY = (
    "no policy file at {where}: submissions are refused until the platform team writes one. "
    "flexorch_policy.yaml beside the specs (or $FLEXORCH_POLICY), e.g. "
    "'teams: {{ml: {{members: [alice], targets: [slurm], max_gpus: 8, max_timeout: 6h}}}}'; "
    "`flexorch validate SPECS_DIR` checks it"
)
PLAN_KEYS = ("spec", "step", "overrides", "step_label", "after", "account")


# (dag id, run ids) → run id → {task instance key: state} of those runs' ``run`` tasks (None: unreadable)
StatesOf = Callable[[str, list[str]], dict[str, dict[str, Any]] | None]


def close_ended(ledger: Ledger, team: str, now: float, states_of: StatesOf, log: Any) -> None:
    """Record what ended without saying so (call under the ledger's lock): a job whose task ended
    (cancelled while deferred, its worker died) and a checked run whose ``run`` tasks have all
    ended (or that has none long after its check: deleted). Until then they count: a job up to its
    timeout, a run against ``max_concurrent``."""
    from flexorch_provider.policy.ledger import QUEUED_S
    from flexorch_provider.triggers.steps import ENDED

    open_jobs = ledger.open_jobs(team, now)
    pending = ledger.pending_runs(team, now)
    runs = sorted({str(j["run"]) for j in open_jobs} | set(pending))
    if not runs:
        return
    try:
        states = states_of(submit_dag_id(team), runs)
    except Exception as e:  # the count stays conservative
        log.warning("cannot read the states of team %s's submissions (%s); they keep counting", team, e)
        return
    if states is None:
        return
    for j in open_jobs:
        index = str(j["job"]).rsplit("/", 1)[-1]
        if (states.get(str(j["run"])) or {}).get(f"run_{index}") in ENDED:
            ledger.append({"t": "end", "run": j["run"], "job": j["job"], "try": j["try"], "at": now, "by": "check"})
    for run, check in pending.items():
        tasks = states.get(run) or {}
        if (tasks and all(state in ENDED for state in tasks.values())) or (
            not tasks and now - float(check.get("at", now)) > QUEUED_S
        ):
            ledger.append({"t": "done", "run": run, "team": team, "at": now})


# where a submission was made: the policy file and the team whose submit DAG ran it (None: the one
# submit DAG of a server without teams)
Place = tuple[str | None, str | None]


def team_of(place: Place, user: str | None) -> tuple[Policy, str, Team]:
    """The policy and the user's team; PolicyError when there is no policy, no team for the user, or
    the user's team is not the one whose submit DAG this is."""
    policy_file, dag_team = place
    policy = load_policy(policy_file)
    if policy is None:
        raise PolicyError([NO_POLICY.format(where=policy_file or "(none configured)")])
    found = policy.team_of(user)
    if found is None:
        raise PolicyError([f"user {user or '(unknown)'} is in no team of {policy.file} and it has no default_team"])
    if dag_team != found[0] and (dag_team is not None or policy.teams):
        mine = submit_dag_id(found[0])
        this = submit_dag_id(dag_team)
        raise PolicyError(
            [
                f"user {user or '(unknown)'} is in team {found[0]}, and {this} runs "
                + (f"team {dag_team}'s submissions" if dag_team else "no team's submissions on a server with teams")
                + f": submit through {mine} (`flexorch submit` picks it)"
            ]
        )
    return policy, found[0], found[1]


def plan(sub: Submission, account: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``run`` task's arguments, one set per job in the order they run."""
    index = {step: i for i, (step, _) in enumerate(sub.jobs)}
    return [
        {
            "spec": sub.data,
            "step": step,
            "overrides": sub.overrides or None,
            "step_label": step or sub.name,
            "after": [index[a] for a in sub.after.get(step or "", []) if a in index],
            "account": account,
        }
        for step, _ in sub.jobs
    ]


def host_refusals(team: str, job: Any) -> list[str]:
    """A submitted ssh job dials only hosts the platform named: its connection's own host, a name in
    the connection's ``host_aliases``, or a host of an ssh GPU pool on that connection (the GPU
    pools file), written as that name (no ``user@`` or ``:port`` of the
    submitter's choosing). The worker dials them with the fleet's credentials and sends them the
    job's secrets, so a look-alike or an address of the user's own is refused."""
    if "ssh" not in job.target or not job.ssh.hosts:
        return []
    from airflow.sdk import BaseHook

    from flexorch_provider.backends.sshpool import ALIASES_EXTRA

    conn_id = job.ssh.connection
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as e:
        return [f"team {team}: ssh.connection {conn_id} cannot be read here ({type(e).__name__}); create it"]
    aliases = conn.extra_dejson.get(ALIASES_EXTRA) or {}
    known = {conn.host, *(aliases if isinstance(aliases, dict) else {}), *inventory_hosts(conn_id)} - {None, ""}
    bad = [h for h in job.ssh.hosts if h not in known]
    if not bad:
        return []
    return [
        f"team {team}: ssh host {', '.join(bad)} is not a host the connection {conn_id} names (its host, its "
        f"host_aliases, or a GPU pool's hosts on it: {', '.join(sorted(map(str, known))) or 'none'}); "
        "a submission may dial only those"
    ]


def inventory_hosts(conn_id: str) -> set[str]:
    """The hosts the platform's GPU pools file lists for ssh pools on this connection (none when there
    is no such file, or it is invalid: then only the connection's own names count)."""
    from flexorch_provider.inventory.pools import SshPool, load_pools

    try:
        pools = load_pools()
    except Exception:
        return set()
    return {h for p in pools.values() if isinstance(p, SshPool) and p.connection == conn_id for h in p.hosts}


def admit(
    sub: Submission,
    user: str | None,
    run_id: str,
    place: Place,
    states_of: StatesOf,
    log: Any,
) -> dict[str, Any]:
    """Apply the team's rules, budget and concurrency limit to a submission and record the check;
    the account (``{team, user, run}``) its jobs are charged to. PolicyError lists every refusal."""
    try:
        policy, name, team = team_of(place, user)
    except PolicyError as e:
        for r in e.refusals:
            log.error("refused: %s", r)
        raise
    refusals = [r for _, job in sub.jobs for r in [*static_refusals(name, team, job), *host_refusals(name, job)]]
    jobs = [job for _, job in sub.jobs]
    ledger = Ledger()
    with ledger.locked():  # no other check between reading the ledger and recording this one
        now = time.time()
        ledger.compact(now)
        close_ended(ledger, name, now, states_of, log)
        used = ledger.gpu_hours(name, period_start(team.gpu_hours.per, now), now) if team.gpu_hours else 0.0
        for refusal in (
            budget_refusal(name, team, jobs, used),
            concurrency_refusal(name, team, len(ledger.live_runs(name, now))),
        ):
            if refusal:
                refusals.append(refusal)
        if refusals:
            for r in refusals:
                log.error("refused: %s", r)
            raise PolicyError(refusals)
        ledger.append({"t": "check", "run": run_id, "team": name, "user": user})
    budget = (
        f"; {used:.2f} of {team.gpu_hours.limit:g} GPU-hours used this {team.gpu_hours.per}" if team.gpu_hours else ""
    )
    log.info("policy %s: team %s allows it%s", policy.file, name, budget)
    return {"team": name, "user": user, "run": run_id}


def verify(
    given: dict[str, Any],
    sub: Submission,
    index: int,
    user: str | None,
    run_id: str,
    place: Place,
    again: bool,
    states_of: StatesOf | None = None,
) -> dict[str, Any]:
    """What the ``run`` task at map ``index`` was given against what the conf and the policy give
    now; the account to charge. ``again``: a try after the first (a cleared task), whose budget
    and concurrency are checked again (this run's own jobs aside)."""
    _, name, team = team_of(place, user)
    account = {"team": name, "user": user, "run": run_id}
    expected = plan(sub, account)
    if not 0 <= index < len(expected) or {k: given.get(k) for k in PLAN_KEYS} != expected[index]:
        differ = (
            sorted(k for k in PLAN_KEYS if given.get(k) != expected[index][k])
            if 0 <= index < len(expected)
            else ["map index"]
        )
        raise PolicyError(
            [
                f"the run task's {', '.join(differ)} differ from what the run's conf and the policy give "
                f"(an edited XCom?): refused; submit the spec again"
            ]
        )
    job = sub.jobs[index][1]
    refusals = [*static_refusals(name, team, job), *host_refusals(name, job)]
    if again:
        ledger = Ledger()
        with ledger.locked():
            now = time.time()
            if states_of is not None:
                close_ended(ledger, name, now, states_of, logging.getLogger(__name__))
            used = ledger.gpu_hours(name, period_start(team.gpu_hours.per, now), now) if team.gpu_hours else 0.0
            live = ledger.live_runs(name, now) - {run_id}
            for refusal in (budget_refusal(name, team, [job], used), concurrency_refusal(name, team, len(live))):
                if refusal:
                    refusals.append(refusal + " (a cleared run task is checked again)")
    if refusals:
        raise PolicyError(refusals)
    return account
