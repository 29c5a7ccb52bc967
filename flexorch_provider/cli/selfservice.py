"""``flexorch login | submit | logs | status | cancel``: run a spec on an Airflow you reach only
through its REST API (its URL and your Airflow login; no dags folder, database or SSH key).

``submit`` validates the spec here first (nothing is sent when it is invalid), triggers the
``flexorch-submit`` DAG with the spec in the run's conf (the server validates it again and
applies the team policy), then follows the run: where each job runs, its log as it arrives,
and the job's outcome as the exit code. Ctrl-C detaches; the job keeps running.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import re
import sys
import time
from pathlib import Path
from typing import Any

from flexorch_provider.client.api import Api
from flexorch_provider.client.config import resolve_login, save_token
from flexorch_provider.client.progress import RunFollower, label_of, plan_labels
from flexorch_provider.exceptions import ClientError, SpecError, SpecProblem
from flexorch_provider.records import JobRecord
from flexorch_provider.submission import parse_submission, submit_dag_id


def _say(line: str) -> None:
    print(line, flush=True)


def _api(args: argparse.Namespace) -> Api:
    team = getattr(args, "of_team", None)
    return Api(resolve_login(args.url, args.user), dag_id=submit_dag_id(team) if team else None)


def _login(args: argparse.Namespace) -> int:
    login = resolve_login(args.url, args.user, password="")
    if not login.user:
        login.user = input("Airflow user: ").strip()
    login.password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    login.token = None
    api = Api(login)
    api.authenticate()
    path = save_token(login, remember_password=args.save_password)
    _say(
        f"logged in to {login.url} as {login.user}; saved to {path} (mode 0600)"
        + ("" if args.save_password else "; when the token expires, run `flexorch login` again")
    )
    return 0


def _run_id(name: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%f")
    return f"submit__{name}__{stamp}"


def _detached(run_id: str) -> int:
    _say("")
    _say(f"==> detached from {run_id}; the job keeps running")
    _say(f"    follow it:  flexorch logs {run_id} --follow")
    _say(f"    cancel it:  flexorch cancel {run_id}")
    return 130


def _submit(args: argparse.Namespace) -> int:
    path = Path(args.spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(SpecProblem(str(path), None, "", f"cannot read the file: {e}")) from None
    conf: dict[str, Any] = {
        "spec": text,
        "step": args.step,
        "set": [*(args.set or []), *(["code=null"] if args.no_code else [])],
    }
    sub = parse_submission(conf, file=str(path))  # invalid: file:line: field: message, nothing sent
    bundles = _code_of(sub, path)  # over its size cap: refused here, nothing sent
    api = _api(args)
    if bundles:
        conf["code"] = _send_code(api, bundles)
    run_id = _run_id(sub.name)
    try:
        api.trigger(run_id, conf)
    except ClientError as e:
        if e.status == 403:
            raise ClientError(
                f"user {api.login.user!r} may not trigger the {api.dag_id} DAG on {api.base}: ask an "
                "Airflow admin for permission to run it",
                status=403,
            ) from None
        if e.status == 404:
            raise ClientError(
                f"{api.base} has no {api.dag_id} DAG: install flexorch-provider there and put its "
                "loader (dags/flexorch_dags.py) in the dags folder",
                status=404,
            ) from None
        raise
    steps = ", ".join(s for s, _ in sub.jobs if s) or f"{sub.kind} on {'/'.join(sub.jobs[0][1].target)}"
    _say(f"==> submitted {sub.name} ({steps}) as run {run_id} on {api.base}")
    if args.detach:
        _say(f"    follow it:  flexorch logs {run_id} --follow")
        _say(f"    cancel it:  flexorch cancel {run_id}")
        return 0
    try:
        dag = api.dag()
        if dag.get("is_paused"):
            _say(f"==> warning: the {api.dag_id} DAG is paused on the server: the run waits until it is unpaused")
        state = RunFollower(api, run_id, _say).follow(interval=args.interval)
    except KeyboardInterrupt:
        return _detached(run_id)
    _say(f"==> {sub.name}: {state} (run {run_id})")
    return 0 if state == "success" else 1


def _code_of(sub: Any, path: Path) -> dict[str, Any]:
    """Each job's code (``code:``, relative to the spec file's folder) packed: step ('' for the spec) → bundle."""
    from flexorch_provider.code import bundle_for

    out = {}
    for step, job in sub.jobs:
        if job.code is not None and job.code.git is not None:
            _say(
                f"==> code{f' (step {step})' if step else ''}: fetched from {job.code.git} by the worker, nothing sent"
            )
            continue
        bundle = bundle_for(job, path.parent)
        if bundle is not None:
            out[step or ""] = bundle
    return out


def _send_code(api: Api, bundles: dict[str, Any]) -> dict[str, str]:
    """Upload each bundle the server lacks (once per digest); what it sends, said: the conf's ``code``."""
    from flexorch_provider.code import human

    done: set[str] = set()
    for step, bundle in bundles.items():
        digest = bundle.digest
        where = f" (step {step})" if step else ""
        for why in bundle.skipped:
            _say(f"==> code{where}: left out {why}")
        if digest in done:
            continue
        done.add(digest)
        if api.code_has(digest):
            _say(f"==> {bundle.summary()} from {bundle.root}{where}: already on the server, nothing sent")
            continue
        data = bundle.tarball()
        started = time.monotonic()
        api.code_put(digest, data)
        _say(f"==> {bundle.summary()} from {bundle.root}{where}: sent {human(len(data))} in "
             f"{time.monotonic() - started:.1f}s")  # fmt: skip
    return {step: b.digest for step, b in bundles.items()}


def _logs(args: argparse.Namespace) -> int:
    if args.service:
        return _service_logs(args)
    if not args.run:
        raise ClientError("say which run (the id `flexorch submit` printed), or --service NAME")
    api = _api(args)
    api.run(args.run)  # a run that does not exist: one clear line
    follower = RunFollower(api, args.run, _say, tail=args.tail)
    try:
        if args.follow:
            state = follower.follow(interval=args.interval)
            _say(f"==> run {args.run}: {state}")
            return 0 if state == "success" else 1
        follower.step()
    except KeyboardInterrupt:
        return 130
    return 0


def _service_logs(args: argparse.Namespace) -> int:
    """Each replica's recent lines, prefixed ``[replica N host]``; ``--follow`` keeps printing new ones."""
    api = _api(args)
    tail = 50 if args.tail is None else args.tail
    cursors: dict[str, int] | None = None
    said_none = False
    try:
        while True:
            out = api.service_logs(args.service, args.replica, tail, cursors)
            if out.get("mask_note") and cursors is None:
                _say(f"==> {out['mask_note']}")
            for r in out["replicas"]:
                prefix = f"[replica {r['slot']} {r['host']}]"
                if r.get("error"):
                    _say(f"{prefix} cannot read its log: {r['error']}")
                for line in r.get("lines", []):
                    _say(f"{prefix} {line}")
            for host, why in (out.get("unreachable") or {}).items():
                if cursors is None:
                    _say(f"==> {host} is unreachable: {why}")
            if not out["replicas"] and not said_none:
                which = f"replica {args.replica} of " if args.replica is not None else ""
                _say(f"==> no {which}service {args.service} replica is running")
                said_none = True
            if not args.follow:
                return 0 if out["replicas"] else 1
            cursors = {**(cursors or {}), **out.get("cursors", {})}
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 130


def _elapsed(start: str | None, end: str | None) -> str:
    if not start:
        return "-"
    t0 = dt.datetime.fromisoformat(start)
    t1 = dt.datetime.fromisoformat(end) if end else dt.datetime.now(dt.UTC)
    seconds = int((t1 - t0).total_seconds())
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _spec_name(run: dict[str, Any]) -> str:
    text = str((run.get("conf") or {}).get("spec") or "")
    match = re.search(r"^name:[ \t]*([a-z0-9-]+)", text, re.M)
    return match.group(1) if match else "?"


def _team_usage(api: Api, only: str | None) -> int:
    data = api.usage()
    if data.get("policy") is None:
        _say(f"no team policy on {api.base}: every submission is allowed, nothing is counted")
        return 0
    me = api.login.user
    teams = [t for t in data["teams"] if only in (None, t["team"])]
    if only is not None and not teams:
        raise ClientError(
            f"no team {only!r} in {data['policy']} (teams: {', '.join(t['team'] for t in data['teams'])})"
        )
    teams.sort(key=lambda t: me not in t["members"])  # your own team first
    rows = []
    for t in teams:
        g = t["gpu_hours"]
        budget = f"{g['used']:.2f} of {g['limit']:g}" if g["limit"] is not None else f"{g['used']:.2f} (no limit)"
        live = f"{t['live_runs']} of {t['max_concurrent']}" if t["max_concurrent"] else str(t["live_runs"])
        rows.append([t["team"] + (" (you)" if me in t["members"] else ""), f"{budget} this {g['per']}", live])
    _table(["TEAM", "GPU-HOURS", "LIVE RUNS"], rows)
    return 0


def _live_jobs(api: Api, target: str | None) -> int:
    """Every flex job pending or running that you may see (GET /flexorch/api/jobs)."""
    jobs = api.flexorch("jobs", {"target": target})["jobs"]
    if not jobs:
        _say(f"no flex job is pending or running{f' on {target}' if target else ''} on {api.base}")
        return 0
    rows = []
    for j in jobs:
        task = f"{j['dag_id']}/{j['task_id']}" + (f"[{j['map_index']}]" if j["map_index"] >= 0 else "")
        elapsed = j.get("elapsed_s")
        rows.append(
            [
                task,
                j.get("target") or "-",
                j.get("job_id") or "-",
                f"{j.get('state')} {j.get('reason') or ''}".strip(),
                f"{int(elapsed)}s" if elapsed is not None else "-",
                (j.get("where") or {}).get("summary", "-"),
            ]
        )
    _table(["TASK", "TARGET", "JOB", "STATE", "ELAPSED", "WHERE"], rows)
    return 0


def _status(args: argparse.Namespace) -> int:
    api = _api(args)
    if args.team is not None:
        return _team_usage(api, args.team or None)
    if args.jobs:
        return _live_jobs(api, args.target)
    if args.run:
        run = api.run(args.run)
        _say(
            f"run {args.run}: {run.get('state')}  spec {_spec_name(run)}  by {run.get('triggering_user_name')}  "
            f"elapsed {_elapsed(run.get('start_date'), run.get('end_date'))}"
        )
        rows = []
        labels = plan_labels(api, args.run)
        for ti in api.task_instances(args.run):
            job = _job_of(api, args.run, ti)
            rows.append(
                [
                    label_of(ti, labels),
                    str(ti.get("state")),
                    job.target if job else "-",
                    job.job_id if job else "-",
                    _elapsed(ti.get("start_date"), ti.get("end_date")),
                    job.summary if job else "-",
                ]
            )
        _table(["TASK", "STATE", "TARGET", "JOB", "ELAPSED", "WHERE"], rows)
        return 0
    me = api.login.user
    runs = [r for r in api.runs(limit=args.limit * 4) if args.all or r.get("triggering_user_name") == me][: args.limit]
    rows = [
        [
            r["dag_run_id"],
            _spec_name(r),
            str(r.get("state")),
            str(r.get("triggering_user_name")),
            _elapsed(r.get("start_date"), r.get("end_date")),
        ]
        for r in runs
    ]
    if not rows:
        _say(f"no submitted runs{'' if args.all else f' by {me}'} on {api.base}")
        return 0
    _table(["RUN", "SPEC", "STATE", "USER", "ELAPSED"], rows)
    return 0


def _job_of(api: Api, run_id: str, ti: dict[str, Any]) -> JobRecord | None:
    """The job a submitted run's task runs (its ``job`` XCom), if it has submitted one."""
    if ti.get("task_id") != "run":
        return None
    return JobRecord.from_dict(api.xcom(run_id, "run", "job", int(ti.get("map_index", -1))))


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    for row in [head, *rows]:
        _say("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip())


def _cancel(args: argparse.Namespace) -> int:
    api = _api(args)
    run = api.run(args.run)
    if run.get("state") in ("success", "failed"):
        _say(f"run {args.run} has already ended ({run.get('state')}); nothing to cancel")
        return 0
    labels = plan_labels(api, args.run)
    jobs = {label_of(ti, labels): _job_of(api, args.run, ti) for ti in api.task_instances(args.run)}
    api.fail_run(args.run)  # Airflow stops its tasks; each stops its job (on_kill, in the worker or the triggerer)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        live = [ti for ti in api.task_instances(args.run) if ti.get("state") in ("running", "deferred", "queued")]
        if not live:
            break
        time.sleep(1)
    for label, job in jobs.items():
        if job is not None:
            _say(f"==> {label}: job {job.job_id} on {job.target} stopped")
    _say(f"==> cancelled run {args.run}")
    return 0


def add_parsers(sub: Any) -> None:
    def server(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="the Airflow API (default: $FLEXORCH_API_URL, else `flexorch login`'s)")
        p.add_argument("--user", help="Airflow user (default: $FLEXORCH_USER, else `flexorch login`'s)")
        p.add_argument(
            "--of-team",
            metavar="TEAM",
            help="act on TEAM's submissions (its DAG flexorch-submit-TEAM; default: your own team's), "
            "for an admin or a member of several teams' roles",
        )

    p = sub.add_parser("login", help="log in to an Airflow API and save the token (0600) for the other commands")
    server(p)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument(
        "--save-password",
        action="store_true",
        help="also save the password (0600), so an expired token is renewed without asking",
    )
    p.set_defaults(func=_login)

    p = sub.add_parser("submit", help="run a spec through Airflow's REST API and follow its log (Ctrl-C detaches)")
    p.add_argument("spec", metavar="SPEC", help="a spec file")
    p.add_argument("--step", help="run one step of a pipeline spec")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. resources.gpus=4")
    p.add_argument("--detach", "-d", action="store_true", help="submit and return; follow later with `flexorch logs`")
    p.add_argument(
        "--no-code", action="store_true", help="do not send the spec's code: folder; the job runs without it"
    )
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    server(p)
    p.set_defaults(func=_submit)

    p = sub.add_parser("logs", help="print a submitted run's log (every task, prefixed), or a service's replicas' logs")
    p.add_argument("run", metavar="RUN", nargs="?", help="the run id `flexorch submit` printed")
    p.add_argument("--service", metavar="NAME", help="a service's replica logs instead (from its hosts or pods)")
    p.add_argument("--replica", type=int, metavar="N", help="with --service: only replica N")
    p.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until the run ends (services: until Ctrl-C)"
    )
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines of each task so far (services: 50)")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    server(p)
    p.set_defaults(func=_logs)

    p = sub.add_parser("status", help="your recent submitted runs, or one run's jobs")
    p.add_argument("run", metavar="RUN", nargs="?", help="one run: its tasks, targets and job ids")
    p.add_argument("--all", action="store_true", help="every user's runs")
    p.add_argument(
        "--team",
        nargs="?",
        const="",
        metavar="NAME",
        help="GPU-hours used and live runs per team (yours first), or one team's",
    )
    p.add_argument("--jobs", action="store_true", help="every flex job pending or running, on every target")
    p.add_argument("--target", help="with --jobs: only this target's")
    p.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    server(p)
    p.set_defaults(func=_status)

    p = sub.add_parser("cancel", help="stop a submitted run and its jobs")
    p.add_argument("run", metavar="RUN", help="the run id")
    p.add_argument("--wait", type=float, default=60, help="seconds to wait for its tasks to stop (default 60)")
    server(p)
    p.set_defaults(func=_cancel)
