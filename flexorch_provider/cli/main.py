"""``flexorch`` — validate, render, generate DAGs from, and run job specs.

Exit codes: 0 success, 1 invalid spec(s) or a failed action, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flexorch_provider import __version__
from flexorch_provider.exceptions import FlexorchError, SpecError


def _validate(args: argparse.Namespace) -> int:
    from flexorch_provider.policy import FILE_NAME, load_policy, policy_problems
    from flexorch_provider.spec.container import container_warnings
    from flexorch_provider.spec.loader import load_specs

    missing = [p for p in args.paths if not Path(p).exists()]
    for p in missing:
        print(f"{p}: no such file or folder", file=sys.stderr)
    existing = [Path(p) for p in args.paths if Path(p).exists()]
    # the team policy is validated like a spec: given as a file, or beside the specs of a folder
    policy_paths = [p for p in existing if p.is_file() and p.name == FILE_NAME]
    policy_paths += [p / FILE_NAME for p in existing if p.is_dir() and (p / FILE_NAME).is_file()]
    specs, problems = load_specs([p for p in existing if p not in policy_paths])
    for policy_path in policy_paths:
        try:
            policy = load_policy(policy_path)
        except SpecError as e:
            problems.extend(e.problems)
            continue
        if policy is not None:
            for path, spec in list(specs):
                broken = (
                    policy_problems(policy, spec, str(path), path.read_text(errors="replace"))
                    if path.parent == policy_path.parent
                    else []
                )
                if broken:
                    problems.extend(broken)
                    specs.remove((path, spec))
    for problem in problems:
        print(problem)
    if not specs and not problems and not missing:
        print("no spec files (*.yaml, *.yml) found", file=sys.stderr)
        return 1
    bad_files = len({p.file for p in problems})
    if problems or missing:
        print(f"{len(problems)} problem(s) in {bad_files} file(s); {len(specs)} spec(s) valid", file=sys.stderr)
        return 1
    if not args.quiet:
        for path, spec in specs:
            print(f"ok  {path}  ({spec.kind} {spec.name})")
    warnings = [
        f"{path}: warning: {spec.name}{f' step {step}' if step else ''}: {text}"
        for path, spec in specs
        for step, job in _jobs(spec)
        for text in container_warnings(job)
    ]
    for line in warnings:
        print(line, file=sys.stderr)
    print(f"{len(specs)} spec(s) valid" + (f", {len(warnings)} warning(s)" if warnings else ""), file=sys.stderr)
    return 0


def _policy(args: argparse.Namespace) -> int:
    from flexorch_provider.policy import FILE_NAME, load_policy
    from flexorch_provider.policy.audit import audit, report

    path = Path(args.path)
    path = path / FILE_NAME if path.is_dir() else path
    policy = load_policy(path)
    if policy is None:
        print(f"no policy at {path}: every submission is refused (write {FILE_NAME} to allow some)")
        return 0
    if args.action == "roles":
        from flexorch_provider.policy.grants import role_commands

        print("\n".join(role_commands(policy)))
        return 0
    for line in report(policy):
        print(line)
    return 1 if args.strict and audit(policy) else 0


def _jobs(spec: Any) -> list[tuple[str | None, Any]]:
    """The runnable workloads of a spec: itself, or a pipeline's steps (with its defaults)."""
    from flexorch_provider.spec.models import PipelineSpec

    if isinstance(spec, PipelineSpec):
        return [(step.name, step) for step in spec.effective_steps()]
    return [(None, spec)]


def _schema(args: argparse.Namespace) -> int:
    if args.format == "markdown":
        from flexorch_provider.spec.reference import markdown_reference

        sys.stdout.write(markdown_reference())
        return 0
    from flexorch_provider.spec.schema import json_schema

    if args.policy:
        from flexorch_provider.policy import Policy

        schema = Policy.model_json_schema()
        schema["properties"].pop("file", None)
        print(json.dumps(schema, indent=2 if not args.compact else None))
        return 0
    print(json.dumps(json_schema(), indent=2 if not args.compact else None))
    return 0


def _render(args: argparse.Namespace) -> int:
    from flexorch_provider.spec.loader import load_spec
    from flexorch_provider.spec.render import spec_to_dict, to_yaml

    if args.target:
        return _render_target(args)
    spec = load_spec(args.spec)
    data = spec_to_dict(spec)
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write(to_yaml(data))
    return 0


def _render_target(args: argparse.Namespace) -> int:
    """What the target would run for this spec: sbatch script, manifests or commands."""
    from flexorch_provider.backends.base import ResolvedJob, run_key
    from flexorch_provider.backends.registry import get_backend
    from flexorch_provider.code import bundle_for
    from flexorch_provider.resolve import load_workload
    from flexorch_provider.spec.loader import load_spec

    spec = load_spec(args.spec)
    steps = [st.name for st in getattr(spec, "steps", None) or []]
    if steps and not args.step:
        print(
            f"error: {spec.name} is a pipeline: render one step with --step (steps: {', '.join(steps)})",
            file=sys.stderr,
        )
        return 2
    workload = load_workload(args.spec, step=args.step)
    if args.target not in workload.target:  # what another target would run: the spec as if it named only that one
        workload = load_workload(args.spec, step=args.step, target=args.target, overrides={"max_pending": None})
    job = ResolvedJob.for_run(
        workload,
        run_key(spec.name, args.step or workload.kind, args.run_id),
        secrets={k: "<resolved at run time>" for k in workload.secrets},
        code=bundle_for(workload, Path(args.spec).parent),
    )
    sys.stdout.write(get_backend(args.target).render(job))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from flexorch_provider.dag_factory.codegen import generate

    result = generate(args.spec_dir, args.out_dir)
    for path in result.written:
        print(f"wrote      {path}")
    for path in result.removed:
        print(f"removed    {path}  (its spec is gone)")
    if not args.quiet:
        for path in result.unchanged:
            print(f"unchanged  {path}")
    for problem in result.problems:
        print(problem, file=sys.stderr)
    if result.problems:
        print(f"{len(result.problems)} problem(s): those specs got no DAG file", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexorch", description="Describe AI/ML workloads in one YAML spec and run them from Airflow."
    )
    parser.add_argument("--version", action="version", version=f"flexorch-provider {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check spec files or folders; one line per problem")
    p.add_argument("paths", nargs="+", metavar="PATH", help="spec files or folders (searched for *.yaml, *.yml)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    p.set_defaults(func=_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of a spec (for editors)")
    p.add_argument("--compact", action="store_true", help="one line of JSON")
    p.add_argument("--format", choices=("json", "markdown"), default="json", help="markdown: the spec reference")
    p.add_argument("--policy", action="store_true", help="the JSON Schema of flexorch_policy.yaml instead")
    p.set_defaults(func=_schema)

    p = sub.add_parser("render", help="print the normalized, fully defaulted spec")
    p.add_argument("spec", metavar="SPEC", help="a spec file")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")
    p.add_argument("--target", help="instead, print what this target would run (templates not rendered)")
    p.add_argument("--step", help="the pipeline step to render with --target")
    p.add_argument(
        "--run-id",
        default="<run_id>",
        help="with --target: render for this Airflow run id (then the job name and paths are the ones that run uses)",
    )
    p.set_defaults(func=_render)

    p = sub.add_parser("generate", help="write one static DAG file per spec (for reviewed, committed DAGs)")
    p.add_argument("spec_dir", metavar="SPEC_DIR", help="folder of spec files")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where the DAG files go (e.g. your dags folder)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not list unchanged files")
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "policy",
        help="the team policy: `flexorch policy audit` lists the rules left open; `flexorch policy roles` "
        "prints the airflow commands that create each team's roles (FAB auth manager)",
    )
    p.add_argument("action", choices=("audit", "roles"))
    p.add_argument(
        "path", nargs="?", default=".", metavar="PATH", help="flexorch_policy.yaml, or the specs folder it is in"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when any rule is open")
    p.set_defaults(func=_policy)

    from flexorch_provider.cli import gpus, selfservice, up

    up.add_parser(sub)
    gpus.add_parsers(sub)
    selfservice.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpecError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    except FlexorchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `flexorch schema | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
