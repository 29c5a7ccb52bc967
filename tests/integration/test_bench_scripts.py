"""The bench/ scripts still import and run (their numbers are not asserted: timings vary by
machine; the scripts print ratios against a baseline measured in the same run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_there_are_bench_scripts():
    assert {p.name for p in SCRIPTS} >= {"parse_specs.py", "ssh_submit.py", "slurm_polling.py", "gpu_inventory.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_each_script_imports_and_explains_itself(script):
    out = run(str(script), "--help", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "usage:" in out.stdout and "--" in out.stdout


def test_parse_specs_runs_small_and_prints_the_ratio_table():
    out = run("bench/parse_specs.py", "--specs", "10", "--repeat", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {
        line.split()[0] + " " + line.split()[1]: line.split()
        for line in out.stdout.splitlines()
        if line.startswith("flexorch (")
    }
    assert set(rows) >= {"flexorch (cold)", "flexorch (warm)"}
    assert all(row[2] == "10" for row in rows.values())  # every loader produced the 10 DAGs
    assert "× dag-factory" in out.stdout and "goal: warm" in out.stdout
    plain = next(line.split() for line in out.stdout.splitlines() if line.startswith("plain Python"))
    assert plain[2] == "10" and plain[4] == "1.00"  # the baseline row: its own 10 DAGs, 1.00× itself
    assert "× plain Python" in out.stdout and "goal: cold ≤ 2× plain Python" in out.stdout
