"""Values reach the job byte for byte: Jinja's defaults drop a trailing newline and turn \\r\\n
into \\n; FlexOperator's rendering keeps both, templated or not (real local jobs)."""

from __future__ import annotations

import json
import sys
import types

import pytest

from flexorch_provider.operators.flex import FlexOperator

HOSTILE = {
    "TRAILING": "value\n",
    "TWO_TRAILING": "value\n\n",
    "CRLF": "line one\r\nline two\r\n",
    "LONE_CR": "a\rb",
    "QUOTES": "'single' \"double\" `back` $(id) ${HOME} \\ ; | & > <",
    "UNICODE": "Ω 🚀 ünïcode",
    "BIG": "x" * 100_000 + "\n",
    "TEMPLATED": "day {{ ds }}\r\nnext\n",
    "TEMPLATED_TRAILING": "{{ params.p }}\n",
}
EXPECTED = {**HOSTILE, "TEMPLATED": "day 2026-01-02\r\nnext\n", "TEMPLATED_TRAILING": "P\n"}
DUMP = "import json, os, sys; json.dump({k: os.environ[k] for k in sys.argv[2:]}, open(sys.argv[1], 'w'))"


def _run(tmp_path, spec_extra):
    out = tmp_path / "seen.json"
    spec = {"name": "exact", "kind": "batch", "target": "local", "local": {"run_dir": str(tmp_path / "runs")},
            "run": [sys.executable, "-c", DUMP, str(out), *HOSTILE], "env": HOSTILE, **spec_extra}  # fmt: skip
    op = FlexOperator(task_id="t", spec=spec, deferrable=False, poll_interval=0.1)
    ti = types.SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1, xcom_push=lambda **kw: None)
    context = {"ti": ti, "ds": "2026-01-02", "params": {"p": "P"}}
    op.render_template_fields(context)
    op.execute(context)
    return json.loads(out.read_text())


def test_env_values_arrive_byte_for_byte(tmp_path):
    assert _run(tmp_path, {}) == EXPECTED


@pytest.mark.parametrize("script", ["printf '%s' \"$CRLF\" > crlf.out\n", "printf '%s' '{{ ds }}' > crlf.out\r\n"])
def test_a_script_keeps_its_newlines(tmp_path, script):
    op = FlexOperator(task_id="t", spec={"name": "s", "kind": "batch", "run": script, "setup": "true\n"})
    op.render_template_fields({"ds": "2026-01-02"})
    assert op.run == script.replace("{{ ds }}", "2026-01-02") and op.setup == "true\n"
