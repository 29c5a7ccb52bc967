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
