"""Templates in a submitted spec: rendered by flexorch's own environment, with plain values only.

A submitted spec comes from a user the team policy must not have to trust, and Airflow's template
context is full of live objects: ``macros`` reaches Python's ``os`` (``macros.uuid.os``), ``ti``,
``dag_run``, ``var`` and ``conn`` read and write the metadata database, and Airflow's environment
has a loader (``{% include "flexorch_policy.yaml" %}`` reads files beside the DAG). So the ``run``,
``setup``, ``env`` and ``workdir`` of a submitted spec never see them. They are rendered here, in an
immutable sandbox with no loader and no extensions, from a context of text and JSON values::

    ds  ds_nodash  ts  ts_nodash  ts_nodash_with_tz                      (text)
    logical_date  data_interval_start  data_interval_end  run_after    (ISO 8601 text)
    run_id                                                              (text)
    params                                                              (the run's params, JSON values)
    macros.ds_add(ds, days)  macros.ds_format(ds, input_format, output_format)

and a short list of filters (:data:`FILTERS`). :func:`check` refuses anything else with the reason,
before anything runs (``flexorch submit`` on the laptop, the ``check`` task on the server): another
name, a call of anything but the two helpers, a filter off the list, ``for`` loops (a loop over
the spec's own text is quadratic work on the worker), ``include``/``import``/``extends``/``macro``/
``call``/``filter`` blocks, ``**``. :func:`render` applies the same check and renders; the ``run``
task calls it itself, so a template that reached it some other way (an edited XCom) is held to
the same rules. Specs in the dags folder are written by DAG authors and keep Airflow's templates.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

DATE_NAMES = ("ds", "ds_nodash", "ts", "ts_nodash", "ts_nodash_with_tz")
ISO_NAMES = ("logical_date", "data_interval_start", "data_interval_end", "run_after")
NAMES = frozenset({*DATE_NAMES, *ISO_NAMES, "run_id", "params", "macros"})
HELPERS = frozenset({"ds_add", "ds_format"})
FILTERS = frozenset(
    {
        "abs", "capitalize", "count", "d", "default", "first", "float", "int", "join", "last", "length",
        "list", "lower", "replace", "reverse", "round", "sort", "string", "title", "tojson", "trim",
        "truncate", "unique", "upper", "urlencode",
    }
)  # fmt: skip
TESTS = frozenset({"defined", "undefined", "none", "number", "string", "mapping", "sequence", "eq", "ne", "in"})
ALLOWED_NODES = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.Const, nodes.Name, nodes.Getattr, nodes.Getitem,
    nodes.Slice, nodes.Filter, nodes.Test, nodes.Call, nodes.Keyword, nodes.If, nodes.Assign, nodes.CondExpr,
    nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Neg, nodes.Pos, nodes.Not,
    nodes.And, nodes.Or, nodes.Compare, nodes.Operand, nodes.Concat, nodes.Tuple, nodes.List, nodes.Dict,
    nodes.Pair,
)  # fmt: skip
MAX_OUTPUT = 1024 * 1024  # characters one rendered value may have
MARKS = ("{{", "{%", "{#")
CR_STAND_IN = "\ue000"  # a private-use character carries \r through Jinja


class TemplateRefused(ValueError):
    """A template a submitted spec may not use; the message says what and why."""


class _Env(ImmutableSandboxedEnvironment):
    """No loader (no include/import/extends can find anything), no extensions, and ``*`` may not
    repeat text or lists (``"x" * 10**9`` is memory, not a value)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            raise SecurityError("** is not allowed in a submitted spec's templates")
        if isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple):
            raise SecurityError("repeating text or a list with * is not allowed in a submitted spec's templates")
        return super().call_binop(context, operator, left, right)


def _env() -> _Env:
    env = _Env(autoescape=False, keep_trailing_newline=True)
    env.filters = {name: f for name, f in env.filters.items() if name in FILTERS}
    env.tests = {name: t for name, t in env.tests.items() if name in TESTS}
    env.globals = {}
    return env


def _parser() -> ImmutableSandboxedEnvironment:
    """For reading a template's shape: every filter known (refused below by name), no globals (so
    ``range``, ``lipsum``, ``cycler``... count as names it may not use)."""
    env = ImmutableSandboxedEnvironment()
    env.globals = {}
    return env


def has_template(text: str) -> bool:
    return any(mark in text for mark in MARKS)


def check(text: str) -> None:
    """Refuse (TemplateRefused, naming the first thing not allowed) a template a submitted spec may
    not use; nothing is rendered."""
    from jinja2 import meta

    try:
        tree = _parser().parse(text)
    except TemplateSyntaxError as e:
        raise TemplateRefused(f"template syntax: {e.message} (line {e.lineno} of the value)") from None
    unknown = sorted(meta.find_undeclared_variables(tree) - NAMES)
    if unknown:
        raise TemplateRefused(
            f"a submitted spec's templates may use {', '.join(sorted(NAMES))}; not {', '.join(unknown)} "
            "(pass Variables and Connections through secrets:)"
        )
    found = list(tree.find_all(nodes.Node))
    for rule in (_kind, _attribute, _filter, _call):  # the most telling reason first
        for node in found:
            why = rule(node)
            if why:
                raise TemplateRefused(f"{why} (line {node.lineno})")


def _kind(node: nodes.Node) -> str | None:
    return None if isinstance(node, ALLOWED_NODES) else f"{_what(node)} is not allowed in a submitted spec"


def _attribute(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "macros":
        if node.attr not in HELPERS:
            return f"macros.{node.attr} is not available in a submitted spec: macros.ds_add and macros.ds_format are"
    if isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name == "macros":
        return "macros[...] is not available in a submitted spec"
    if _private(node):
        return "attributes starting with _ are not allowed in a submitted spec"
    return None


def _filter(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Filter) and node.name not in FILTERS:
        return f"filter {node.name!r} is not allowed in a submitted spec (allowed: {', '.join(sorted(FILTERS))})"
    if isinstance(node, nodes.Test) and node.name not in TESTS:
        return f"test {node.name!r} is not allowed in a submitted spec"
    return None


def _call(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Call) and not _is_helper(node.node):
        return "only macros.ds_add(...) and macros.ds_format(...) may be called in a submitted spec"
    return None


def _what(node: nodes.Node) -> str:
    words = {
        "Include": "{% include %}",
        "Import": "{% import %}",
        "FromImport": "{% from ... import %}",
        "Extends": "{% extends %}",
        "For": "a {% for %} loop",
        "Macro": "{% macro %}",
        "CallBlock": "{% call %}",
        "FilterBlock": "{% filter %}",
        "Pow": "**",
    }
    return words.get(type(node).__name__, type(node).__name__)


def _private(node: nodes.Node) -> bool:
    if isinstance(node, nodes.Getattr):
        return node.attr.startswith("_")
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return isinstance(node.arg.value, str) and node.arg.value.startswith("_")
    return False


def _is_helper(node: nodes.Node) -> bool:
    return (
        isinstance(node, nodes.Getattr)
        and node.attr in HELPERS
        and isinstance(node.node, nodes.Name)
        and node.node.name == "macros"
    )


def render(text: str, values: dict[str, Any]) -> str:
    """``text`` rendered with ``values`` (from :func:`plain_values`) under the rules of :func:`check`."""
    if not has_template(text):
        return text
    check(text)
    keep_cr = "\r" in text and CR_STAND_IN not in text  # Jinja turns \r\n into \n: values arrive byte for byte
    source = text.replace("\r", CR_STAND_IN) if keep_cr else text
    try:
        out = _env().from_string(source).render(**values)
    except SecurityError as e:
        raise TemplateRefused(str(e)) from None
    out = out.replace(CR_STAND_IN, "\r") if keep_cr else out
    if len(out) > MAX_OUTPUT:
        raise TemplateRefused(f"a rendered value is longer than {MAX_OUTPUT} characters")
    return out


def render_all(value: Any, values: dict[str, Any]) -> Any:
    """:func:`render` over a field's value: text, and the text inside lists and dicts (``env``)."""
    if isinstance(value, str):
        return render(value, values)
    if isinstance(value, list | tuple):
        return type(value)(render_all(v, values) for v in value)
    if isinstance(value, dict):
        return {k: render_all(v, values) for k, v in value.items()}
    return value


class _Helpers:
    """``macros`` in a submitted spec: two pure functions of text, nothing else."""

    @staticmethod
    def ds_add(ds: str, days: int) -> str:
        return (dt.date.fromisoformat(str(ds)) + dt.timedelta(days=int(days))).isoformat()

    @staticmethod
    def ds_format(ds: str, input_format: str, output_format: str) -> str:
        return dt.datetime.strptime(str(ds), str(input_format)).strftime(str(output_format))


def plain_values(context: Any) -> dict[str, Any]:
    """The values a submitted spec's templates see, taken from Airflow's context as text (dates as
    ISO 8601) and JSON values (params): never an object with methods that reach further."""
    import json

    out: dict[str, Any] = {}
    for name in DATE_NAMES:
        value = context.get(name)
        if value is not None:
            out[name] = str(value)
    for name in ISO_NAMES:
        value = context.get(name)
        if value is None and name == "run_after":
            value = getattr(context.get("dag_run"), "run_after", None)
        if value is not None:
            out[name] = value.isoformat() if hasattr(value, "isoformat") else str(value)
    run_id = context.get("run_id") or getattr(context.get("dag_run"), "run_id", None)
    if run_id is not None:
        out["run_id"] = str(run_id)
    params = context.get("params") or {}
    out["params"] = json.loads(json.dumps(dict(params), default=str))
    out["macros"] = _Helpers()
    return out
