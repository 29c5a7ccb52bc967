"""YAML → spec, or a SpecError naming file, line, field and what to do.

The YAML is parsed once into a node tree; the tree gives both the data and the line of
every key, so each pydantic error can be pointed at the line the user must edit.
Nothing but a valid spec or a :class:`SpecError` ever leaves :func:`load_spec`.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from flexorch_provider.exceptions import SpecError, SpecProblem
from flexorch_provider.spec.guards import check_depth, check_expansion, unprintable
from flexorch_provider.spec.models import KINDS, SPEC_CLASSES, STEP_CLASSES, Spec, SpecModel

SPEC_SUFFIXES = (".yaml", ".yml")
# the GPU pools file and the team policy may live beside the specs
NOT_SPECS = ("gpu_pools.yaml", "gpu_pools.yml", "flexorch_policy.yaml", "flexorch_policy.yml")
MAX_SPEC_BYTES = 1_000_000

_adapter: TypeAdapter[Any] | None = None


def _spec_adapter() -> TypeAdapter[Any]:
    global _adapter
    if _adapter is None:
        _adapter = TypeAdapter(Spec)
    return _adapter


# libyaml's parser where PyYAML has it (its wheels do): the pure-Python scanner and composer were
# two thirds of a cold parse of a specs folder (bench/parse_specs.py)
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SpecYamlLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader with YAML 1.2 booleans: only true/false are bools, so ``NO`` stays a string."""


_SpecYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

Path_ = tuple[str | int, ...]


def _positions(node: yaml.Node, file: str) -> dict[Path_, int]:
    """Map each key path to its 1-based line; refuse duplicate keys (YAML keeps the last silently)."""
    lines: dict[Path_, int] = {(): node.start_mark.line + 1}

    def walk(n: yaml.Node, path: Path_) -> None:
        if isinstance(n, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in n.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
                line = key_node.start_mark.line + 1
                if key in seen:
                    dotted = _dotted((*path, key))
                    raise SpecError(
                        SpecProblem(file, line, dotted, f"duplicate key (first set on line {seen[key]}); keep one")
                    )
                seen[key] = line
                lines[(*path, key)] = line
                walk(value_node, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    walk(node, ())
    return lines


def _dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_for(lines: Mapping[Path_, int], path: Path_) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def parse_yaml(text: str, file: str = "<string>") -> tuple[Any, dict[Path_, int]]:
    """YAML text → (data, line map). Syntax errors become a SpecError with the line."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(SpecProblem(file, None, "", f"file is larger than {MAX_SPEC_BYTES} bytes; is it a spec?"))
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)  # what the pure-Python reader refuses, libyaml too
    if bad:
        e = yaml.reader.ReaderError(file, bad.start(), ord(bad.group()), "unicode", "special characters")
        raise SpecError(SpecProblem(file, text.count("\n", 0, bad.start()) + 1, "", unprintable(e)))
    check_depth(text, file)  # before libyaml composes it: a deep nesting crashes the process
    loader = _SpecYamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(SpecProblem(file, 1, "", "the file is empty; a spec needs at least name, kind and run"))
        check_expansion(node, file)
        lines = _positions(node, file)
        data = loader.construct_document(node)
    except yaml.reader.ReaderError as e:
        raise SpecError(SpecProblem(file, text.count("\n", 0, e.position) + 1, "", unprintable(e))) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise SpecError(SpecProblem(file, line, "", f"invalid YAML: {problem}; fix the syntax")) from None
    except yaml.YAMLError as e:
        raise SpecError(SpecProblem(file, None, "", f"invalid YAML: {e}")) from None
    except RecursionError:
        raise SpecError(SpecProblem(file, None, "", "the YAML is nested too deeply")) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError(
            SpecProblem(
                file, 1, "", f"a spec must be a mapping of keys (name:, kind:, ...), not a {type(data).__name__}"
            )
        )
    return data, lines


def parse_spec(data: Any, *, file: str = "<spec>", lines: Mapping[Path_, int] | None = None) -> SpecModel:
    """A mapping → a validated spec, or a SpecError listing every problem."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise SpecError(SpecProblem(file, None, "", "a spec must be a mapping of keys (name:, kind:, ...)"))
    kind = data.get("kind")
    if kind is None:
        raise SpecError(
            SpecProblem(file, _line_for(lines, ()), "kind", f"missing; set kind to one of {', '.join(KINDS)}")
        )
    if not isinstance(kind, str) or kind not in KINDS:
        hint = difflib.get_close_matches(str(kind), KINDS, n=1)
        raise SpecError(
            SpecProblem(
                file,
                _line_for(lines, ("kind",)),
                "kind",
                f"{kind!r} is not a kind"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" (one of {', '.join(KINDS)})",
            )
        )
    try:
        return _spec_adapter().validate_python(data)
    except ValidationError as e:
        raise SpecError(_problems(e, data, file, lines)) from None
    except RecursionError:
        raise SpecError(SpecProblem(file, None, "", "the spec is nested too deeply")) from None


def load_spec_text(text: str, file: str = "<string>") -> SpecModel:
    data, lines = parse_yaml(text, file)
    return parse_spec(data, file=file, lines=lines)


def load_spec(path: str | Path) -> SpecModel:
    """Read and validate one spec file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError(SpecProblem(str(path), None, "", f"cannot read the file: {e.strerror or e}")) from None
    return load_spec_bytes(raw, str(path))


def load_spec_bytes(raw: bytes, file: str) -> SpecModel:
    """A spec file's bytes → a validated spec."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(SpecProblem(file, None, "", f"not UTF-8 text (byte {e.start}); save it as UTF-8")) from None
    return load_spec_text(text, file)


def iter_spec_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given, folders searched recursively for *.yaml / *.yml (sorted; hidden files and
    the GPU pools file skipped)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if (
                    f.is_file()
                    and f.suffix in SPEC_SUFFIXES
                    and f.name not in NOT_SPECS
                    and not any(x.startswith(".") for x in rel)
                ):
                    yield f
        else:
            yield p


# --- turning pydantic errors into problems a user can act on ----------------------------
_PREFIX_RE = re.compile(r"^([a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])?)*): (.*)$", re.S)
_TAGS = set(KINDS)


def _data_path(loc: tuple[Any, ...], data: Any) -> Path_:
    """pydantic's loc carries union tags and validator names; keep only real keys."""
    path: list[str | int] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            path.append(part)
            cur = cur[part]
        elif isinstance(part, str) and (part in _TAGS or "[" in part or part.startswith("function-")):
            continue
        elif isinstance(cur, dict):  # a missing key: keep it so the message names it
            path.append(part)
            cur = None
        else:
            continue
    return tuple(path)


def _split_prefix(text: str) -> tuple[Path_, str]:
    match = _PREFIX_RE.match(text)
    if not match:
        return (), text
    parts: list[str | int] = []
    for seg in match.group(1).split("."):
        name, _, idx = seg.partition("[")
        parts.append(name)
        if idx:
            parts.append(int(idx.rstrip("]")))
    return tuple(parts), match.group(2)


def _models_at(data: Any, path: Path_, root: type[BaseModel] | None = None) -> list[type[BaseModel]]:
    """The model classes that describe the mapping at ``path`` (for did-you-mean); ``root`` is the
    file's model when it is not a spec (the policy file)."""
    kind = data.get("kind") if isinstance(data, dict) else None
    models: list[type[BaseModel]] = [root] if root else [SPEC_CLASSES[kind]] if kind in SPEC_CLASSES else []
    cur = data
    keyed = False  # the part is a key of a mapping of models (teams.<name>), not a field
    for part in path:
        if isinstance(part, int):
            cur = cur[part] if isinstance(cur, list) and part < len(cur) else None
            continue
        cur = cur.get(part) if isinstance(cur, dict) else None
        if keyed:
            keyed = False
            continue
        nxt: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(part)
            if field is not None:
                nxt.extend(_model_classes(field.annotation))
                keyed = keyed or typing.get_origin(field.annotation) is dict
        models = nxt
        # a step: narrow to its kind
        if models and set(models) <= set(STEP_CLASSES.values()) and isinstance(cur, dict):
            step_kind = cur.get("kind", "batch")
            if step_kind in STEP_CLASSES:
                models = [STEP_CLASSES[step_kind]]
    return models


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_model_classes(arg))
    return out


def _problems(
    error: ValidationError, data: Any, file: str, lines: Mapping[Path_, int], root: type[BaseModel] | None = None
) -> list[SpecProblem]:
    """One problem per error; where a union (``str | list``) failed every branch, keep the
    specific complaint ("at least 1 item") over the generic type mismatches."""
    errors = error.errors(include_url=False)
    found = [(err.get("type", ""), _problem(err, data, file, lines, root)) for err in errors]
    specific = {p.field for etype, p in found if not etype.endswith("_type")}
    out: list[SpecProblem] = []
    for etype, problem in found:
        if etype.endswith("_type") and problem.field in specific:
            continue
        if problem not in out:
            out.append(problem)
    return out


validation_problems = _problems  # for other files validated like specs (the policy file)


def _problem(
    err: Any, data: Any, file: str, lines: Mapping[Path_, int], root: type[BaseModel] | None = None
) -> SpecProblem:
    loc = tuple(err.get("loc", ()))
    path = _data_path(loc, data)
    etype = err.get("type", "")
    message = str(err.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")

    if etype == "extra_forbidden" and path:
        key = str(path[-1])
        parent = path[:-1]
        known = sorted({f for m in _models_at(data, parent, root) for f in m.model_fields})
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if hint:
            message = f"unknown key; did you mean {hint[0]!r}?"
        else:
            message = "unknown key" + (f"; valid keys here: {', '.join(known)}" if known else "")
        others = [k for k, cls in SPEC_CLASSES.items() if key in cls.model_fields] if root is None else []
        if not parent and others and not hint:
            message = f"unknown key for kind {data.get('kind')!r}; {key!r} is only valid for kind {', '.join(others)}"
    elif etype == "missing":
        message = "required; add it" + (" (a shell script or an argv list)" if path[-1:] == ("run",) else "")
    elif etype == "union_tag_invalid" and isinstance(err.get("input"), dict):
        bad = err["input"].get("kind")
        hint = difflib.get_close_matches(str(bad), STEP_CLASSES, n=1)
        path = (*path, "kind")
        message = (
            f"{bad!r} is not a step kind"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" (one of {', '.join(STEP_CLASSES)})"
        )
    else:
        extra, message = _split_prefix(message)
        path = path + extra
        given = err.get("input")
        if etype == "bool_type":
            message += f", not {given!r}: write true or false (only those are booleans; yes, no, on, off are text)"
        elif etype in ("int_type", "float_type") and isinstance(given, str | bool):
            message += f", not {given!r}: write the number without quotes"
        if etype in ("literal_error", "enum") and path and isinstance(err.get("input"), str):
            expected = re.findall(r"'([^']+)'", message)
            hint = difflib.get_close_matches(err["input"], expected, n=1)
            if hint:
                message += f"; did you mean {hint[0]!r}?"
    return SpecProblem(file=file, line=_line_for(lines, path), field=_dotted(path), message=message)


def load_specs(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, SpecModel]], list[SpecProblem]]:
    """Load every spec under ``paths``; collect problems instead of stopping at the first.

    Two specs with the same ``name`` would become the same DAG: the second one is a problem.
    """
    specs: list[tuple[Path, SpecModel]] = []
    problems: list[SpecProblem] = []
    owners: dict[str, Path] = {}
    for path in iter_spec_files(paths):
        try:
            spec = load_spec(path)
        except SpecError as e:
            problems.extend(e.problems)
            continue
        if spec.name in owners:
            problems.append(
                SpecProblem(
                    str(path),
                    None,
                    "name",
                    f"{spec.name!r} is already used by {owners[spec.name]}; names must be unique",
                )
            )
            continue
        owners[spec.name] = path
        specs.append((path, spec))
    return specs, problems
