"""Fuzz: whatever a user writes, the loader returns a valid spec or a SpecError — nothing else.

Two generators, 1,200 documents in all: structured documents built from the real keys
with hostile values (wrong types, huge numbers, unicode, shell metacharacters, path
separators), and raw text (random YAML-ish bytes).
"""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexorch_provider.exceptions import SpecError
from flexorch_provider.spec import load_spec_text
from flexorch_provider.spec.models import SPEC_CLASSES

KEYS = sorted({f for cls in SPEC_CLASSES.values() for f in cls.model_fields} | {"resorces", "gpu", "count", "type"})
NASTY = [
    "$(rm -rf /)", "`id`", "a;b", "../../etc/passwd", "a/b", "a\nb", "'\"", "\x00", "🚀", "Ω", "--", "-rf",
    "A100:80GB:2", "A100::", "64Gi", "6h", "variable:x", "kubernetes:a/b", "@daily", "*/5 * * * *", "{{ ds }}",
    "local", "ssh", "slurm", "kubernetes", "batch", "pipeline", "service", "x" * 300,
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(NASTY),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5)
    ),
    max_leaves=12,
)
documents = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["ok-name", *NASTY]), st.text(max_size=70)),
     "kind": st.one_of(st.sampled_from(list(SPEC_CLASSES)), scalars)},
    optional={k: values for k in KEYS if k not in ("name", "kind")},
)  # fmt: skip


def _load(text: str) -> None:
    try:
        spec = load_spec_text(text)
    except SpecError as e:
        assert e.problems, "a SpecError must carry at least one problem"
        for problem in e.problems:
            assert problem.message
        return
    assert spec.kind in SPEC_CLASSES


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents)
def test_structured_documents(doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    _load(text)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.sampled_from([*"abkn:- \n\t{}[]'\"#&*!|>%@`0123456789.", "name: a\n", "kind: batch\n", "run: "]),
        max_size=60,
    ).map("".join)
)
def test_raw_text(text):
    _load(text)


def _bomb(width: int, depth: int) -> str:
    """A "billion laughs" spec: each anchor lists the previous one ``width`` times."""
    lines = ["name: bomb", "kind: batch", "run: echo", f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, depth + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(min_value=2, max_value=12), st.integers(min_value=0, max_value=6))
def test_alias_bombs_are_refused_before_they_expand(width, extra):
    import math
    import tracemalloc

    depth = math.ceil(math.log(10**6) / math.log(width)) + extra  # expands to a million values or more
    text = _bomb(width, depth)
    tracemalloc.start()
    try:
        load_spec_text(text, file="bomb.yaml")
    except SpecError as e:
        _, peak = tracemalloc.get_traced_memory()
        (problem,) = e.problems
        assert problem.file == "bomb.yaml" and problem.line is not None and "aliases" in problem.message
        assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB to refuse a {len(text)}-byte spec"
    else:
        raise AssertionError("accepted")
    finally:
        tracemalloc.stop()


def test_an_alias_inside_its_own_anchor_is_a_spec_error():
    for text in ("a: &a [*a]\n", "name: x\nkind: batch\nrun: &r [echo, *r]\n", "a: &a {b: *a}\n"):
        try:
            load_spec_text(text, file="loop.yaml")
        except SpecError as e:
            assert "refers to itself" in str(e) and e.problems[0].line is not None
        else:
            raise AssertionError(text)


def test_deep_nesting_is_a_spec_error():
    for text in (
        "run: " + "[" * 5000 + "]" * 5000 + "\n",
        "env:" + "\n".join(" " * i + f"k{i}:" for i in range(1, 2000)),
    ):
        try:
            load_spec_text(text, file="deep.yaml")
        except SpecError as e:
            assert e.problems and e.problems[0].file == "deep.yaml"
        else:
            raise AssertionError("accepted")


def test_nesting_deep_enough_to_crash_libyaml_is_refused_with_a_message(tmp_path):
    """30,000 nested brackets used to crash the parsing process (libyaml composes recursively: no
    exception, exit 139): `flexorch validate` died silently and the dag-processor on every parse.
    In a subprocess, so a crash is a failure here, not of the test run."""
    import subprocess
    import sys
    from pathlib import Path

    for name, body in (("flow", "[" * 30000 + "x" + "]" * 30000), ("mapping", "{a: " * 30000 + "x" + "}" * 30000),
                       ("sequence", "\n  " + "- " * 30000 + "x")):  # fmt: skip
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(f"name: deep\nkind: batch\nrun: {body}\n")
        done = subprocess.run([str(Path(sys.executable).parent / "flexorch"), "validate", str(spec)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 1, (name, done.returncode, done.stderr[-500:])
        assert "nested more than 100 levels deep" in done.stdout + done.stderr, name


GOOD = "name: fine\nkind: batch\nrun: echo hi\nenv:\n  A: x\n"


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.integers(min_value=0, max_value=len(GOOD)),
    st.sampled_from([c for c in map(chr, range(32)) if c not in "\t\n\r"] + ["\x7f", "\ufffe", "\ud800"]),
)
def test_a_control_character_anywhere_is_a_spec_error_with_its_line(position, char):
    text = GOOD[:position] + char + GOOD[position:]
    try:
        load_spec_text(text, file="ctl.yaml")
    except SpecError as e:
        assert e.problems[0].line == GOOD.count("\n", 0, position) + 1, str(e)
        assert f"U+{ord(char):04X}" in str(e)
    else:
        raise AssertionError(f"{char!r} at {position} was accepted")
