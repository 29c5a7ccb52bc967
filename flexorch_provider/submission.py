"""A submitted spec (``flexorch submit``): the run conf → validated jobs, the same on the laptop
(before anything is sent) and on the server (a client is not trusted).

The conf is ``{"spec": TEXT, "step": NAME|null, "set": ["key=value", ...], "code": {STEP: DIGEST}}``
(``code``: the bundles the CLI uploaded for jobs with ``code:``, '' for the spec's own). ``--set`` keys are
dotted paths into the spec (``resources.gpus=4``); values are YAML scalars (``4`` is a number,
``"4"`` text). Templates in a submitted spec see plain values only (the run's dates and id, its
params, two date helpers: :mod:`flexorch_provider.plain_templates`): a Variable or Connection
reaches a job through ``secrets:``, where the team policy can see it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from flexorch_provider.exceptions import SpecError, SpecProblem
from flexorch_provider.resolve import load_workload
from flexorch_provider.spec.loader import parse_spec, parse_yaml
from flexorch_provider.spec.models import Job, PipelineSpec

SUBMIT_DAG_ID = "flexorch-submit"  # with a team policy: one DAG per team, ``flexorch-submit-<team>``
SUBMITTED_FILE = "<submitted spec>"
MAX_SPEC_CHARS = 256 * 1024  # the spec text in a run's conf
MAX_SETS = 100


def submit_dag_id(team: str | None) -> str:
    """The submit DAG of a team (``flexorch-submit-<team>``), or the one DAG when there are no teams."""
    return f"{SUBMIT_DAG_ID}-{team}" if team else SUBMIT_DAG_ID


def is_submit_dag(dag_id: str | None) -> bool:
    """Whether a DAG id is a submit DAG (the generic one or a team's)."""
    return dag_id == SUBMIT_DAG_ID or str(dag_id or "").startswith(SUBMIT_DAG_ID + "-")


@dataclass
class Submission:
    """What a conf asks to run: the spec (as JSON-safe data), the step, the overrides, and the
    validated jobs in an order where every step comes after the steps it needs."""

    name: str
    owner: str
    data: dict[str, Any]
    step: str | None
    overrides: dict[str, Any]
    jobs: list[tuple[str | None, Job]] = field(default_factory=list)  # (step name, workload)
    after: dict[str, list[str]] = field(default_factory=dict)  # step → the steps it waits for
    code: dict[str, str] = field(default_factory=dict)  # step ('' for the spec) → its uploaded code bundle

    def code_digest(self, step: str | None) -> str | None:
        """The uploaded bundle of a job with ``code:`` (None: the submit sent none)."""
        return self.code.get(step or "")

    @property
    def kind(self) -> str:
        return str(self.data.get("kind"))


def overrides_from(sets: list[str]) -> dict[str, Any]:
    """``["resources.gpus=4", "env.MODE=fast"]`` → nested overrides; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    if len(sets) > MAX_SETS:
        raise SpecError(SpecProblem("--set", None, "", f"at most {MAX_SETS} --set values"))
    for item in sets:
        key, sep, raw = str(item).partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise SpecError(SpecProblem("--set", None, key, f"{item!r} is not KEY=VALUE (e.g. resources.gpus=4)"))
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict | list):
            raise SpecError(SpecProblem("--set", None, key, "a --set value is one scalar; set each key on its own"))
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise SpecError(SpecProblem("--set", None, key, f"{part} is set to a value and used as a mapping"))
            node = nxt
        node[path[-1]] = value
    return out


def _json_safe(data: Any) -> Any:
    """YAML data as JSON (dates become ISO text, which the models read back)."""
    return json.loads(json.dumps(data, default=str))


def parse_submission(conf: Any, file: str = SUBMITTED_FILE) -> Submission:
    """Validate a run conf. Raises SpecError (``file:line: field: message``) for anything wrong."""
    if not isinstance(conf, dict):
        raise SpecError(SpecProblem(file, None, "", "the run's conf must be {spec: TEXT, step:, set: [...]}"))
    unknown = sorted(set(conf) - {"spec", "step", "set", "code"})
    if unknown:
        raise SpecError(SpecProblem(file, None, "", f"unknown conf keys {', '.join(unknown)} (spec, step, set, code)"))
    code = conf.get("code") or {}
    if not isinstance(code, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in code.items()):
        raise SpecError(SpecProblem(file, None, "code", "must map a step name ('' for the spec) to a bundle digest"))
    text = conf.get("spec")
    if not isinstance(text, str) or not text.strip():
        raise SpecError(SpecProblem(file, None, "", "conf.spec must hold the spec's YAML text"))
    if len(text) > MAX_SPEC_CHARS:
        raise SpecError(SpecProblem(file, None, "", f"the spec is larger than {MAX_SPEC_CHARS} characters"))
    step = conf.get("step")
    if step is not None and not isinstance(step, str):
        raise SpecError(SpecProblem(file, None, "step", "must be a step name"))
    sets = conf.get("set") or []
    if not isinstance(sets, list):
        raise SpecError(SpecProblem(file, None, "set", "must be a list of KEY=VALUE"))
    overrides = overrides_from([str(s) for s in sets])
    data, lines = parse_yaml(text, file)
    model = parse_spec(data, file=file, lines=lines)
    sub = Submission(name=model.name, owner=model.owner, data=_json_safe(data), step=step, overrides=overrides,
                     code=dict(code))  # fmt: skip
    if isinstance(model, PipelineSpec):
        steps = {s.name: s for s in model.effective_steps()}
        chosen = [step] if step is not None else _ordered(model)
        for name in chosen:
            if name not in steps:
                raise SpecError(SpecProblem(file, None, "step", f"{name!r} is not a step (steps: {', '.join(steps)})"))
            sub.jobs.append((name, _load(sub, name, file)))
            sub.after[name] = [] if step is not None else list(steps[name].after)
    else:
        if step is not None:
            raise SpecError(
                SpecProblem(file, None, "step", f"--step applies to pipelines; this spec is a {model.kind}")
            )
        sub.jobs.append((None, _load(sub, None, file)))
    index = {s.name: i for i, s in enumerate(model.steps)} if isinstance(model, PipelineSpec) else {}
    stray = sorted(set(sub.code) - {s or "" for s, j in sub.jobs if j.code is not None and j.code.git is None})
    if stray:
        raise SpecError(SpecProblem(file, None, "code", f"code for {stray[0]!r}, which is no job of it with code:"))
    for step_name, job in sub.jobs:
        if job.code is not None and job.code.git is not None and not job.code.git.startswith("https://"):
            field_name = f"steps.{step_name}.code.git" if step_name else "code.git"
            raise SpecError(SpecProblem(file, None, field_name, "a submitted spec fetches its code over https:// only "
                                        "(the worker's own files and keys are not the submitter's)"))  # fmt: skip
    for step_name, job in sub.jobs:
        base = ("steps", index[step_name]) if step_name in index else ()
        _check_templates(job, step_name, base, file, lines)
    return sub


def _load(sub: Submission, step: str | None, file: str) -> Job:
    try:
        return load_workload(sub.data, step=step, overrides=sub.overrides or None)
    except SpecError as e:
        raise SpecError([SpecProblem(file, p.line, p.field, p.message) for p in e.problems]) from None


def _ordered(model: PipelineSpec) -> list[str]:
    """Step names so that each comes after the steps it needs (spec order among equals)."""
    done: list[str] = []
    pending = list(model.steps)
    while pending:
        for s in pending:
            if all(dep in done for dep in s.after):
                done.append(s.name)
                pending.remove(s)
                break
    return done


def _check_templates(job: Job, step: str | None, base: tuple[Any, ...], file: str, lines: dict[Any, int]) -> None:
    """Templates may use plain values only (:mod:`flexorch_provider.plain_templates`): the first
    one that reaches further is refused with its field and the spec's line."""
    from flexorch_provider.plain_templates import TemplateRefused, check, has_template

    texts: list[tuple[tuple[Any, ...], str]] = []
    run = job.run if isinstance(job.run, list) else [job.run]
    texts += [(("run", i) if isinstance(job.run, list) else ("run",), t) for i, t in enumerate(run)]
    texts += [(("setup",), job.setup)] if job.setup else []
    texts += [(("env", k), v) for k, v in job.env.items()]
    texts += [(("workdir",), job.workdir)] if job.workdir else []
    for path, text in texts:
        if not has_template(text):
            continue
        try:
            check(text)
        except TemplateRefused as e:
            field = ".".join(str(p) for p in (("steps", step) if step else ()) + path if not isinstance(p, int))
            raise SpecError(SpecProblem(file, _line(lines, (*base, *path)), field, str(e))) from None


def _line(lines: dict[Any, int], path: tuple[Any, ...]) -> int | None:
    """The spec line of ``path`` (a pipeline step's field: the step's own line, else the pipeline's)."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
