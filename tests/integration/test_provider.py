"""flexorch-provider is a real Airflow provider: the real `airflow` CLI lists it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import flexorch_provider


def test_airflow_providers_list_shows_flexorch(tmp_path):
    airflow = Path(sys.executable).parent / "airflow"
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(airflow), "providers", "list", "--output", "json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    providers = {p["package_name"]: p for p in json.loads(result.stdout)}
    assert providers["flexorch-provider"]["version"] == flexorch_provider.__version__


def test_public_names_are_lazy():
    code = "import sys, flexorch_provider; print('pydantic' in sys.modules, 'airflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert flexorch_provider.load_spec.__name__ == "load_spec"
    assert issubclass(flexorch_provider.SpecError, ValueError)


def test_the_airflow_cli_loads_no_plugin_but_flexorchs_and_warns_of_nothing(tmp_path):
    """The product's environment holds what a user's Airflow would: no benchmark-only package that
    registers a plugin every ``airflow`` command loads (dag-factory did, with four deprecation warnings)."""
    airflow = Path(sys.executable).parent / "airflow"
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(airflow), "plugins", "--output", "json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p["name"] for p in json.loads(result.stdout)] == ["flexorch"]
    assert "deprecated" not in result.stderr + result.stdout
