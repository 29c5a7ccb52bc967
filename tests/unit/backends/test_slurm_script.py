"""The sbatch script carries values byte for byte, and never a \\r (sbatch refuses \\r\\n line
breaks): values with \\r go in ANSI-C quotes, script text with \\r through base64."""

from __future__ import annotations

import subprocess

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.slurm.script import _file_from_text, render_script, shell_word
from flexorch_provider.resolve import load_workload

texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(texts, texts.map(lambda t: t + "\r\n")))
def test_a_shell_word_is_the_value_exactly(value):
    out = subprocess.run(["bash", "-c", f"printf %s {shell_word(value)}"], capture_output=True, check=True).stdout
    assert out.decode() == value


def test_text_with_carriage_returns_is_written_exactly(tmp_path):
    text = "echo one\r\necho two\r\n\n"
    lines = _file_from_text(str(tmp_path / "f"), text, "END_MARK")
    subprocess.run(["bash", "-c", "\n".join(lines) + "\n"], check=True)
    assert (tmp_path / "f").read_bytes() == text.encode()


def test_the_script_holds_no_carriage_return():
    w = load_workload({"name": "s", "kind": "batch", "target": "slurm", "run": "echo a\r\necho b\r\n",
                       "setup": "true\r\n", "env": {"CRLF": "x\r\ny\r\n"}})  # fmt: skip
    script = render_script(ResolvedJob.for_run(w, "d/t/r/-1"))
    assert "\r" not in script and "export CRLF=$'x\\r\\ny\\r\\n'" in script
