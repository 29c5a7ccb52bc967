"""A stack whose start fails stops what it started: a failed start of the several-machines test left
its api-server and Redis running for the rest of the suite."""

from __future__ import annotations

import os
import time

import pytest

from flexorch_provider.dev.stack import AirflowStack

STAND_IN = """#!/bin/sh
# airflow, as far as start() needs it: migrate succeeds, the api-server dies at once, the rest keep running
case "$1" in
  db) exit 0 ;;
  api-server) echo "cannot bind" >&2; exit 1 ;;
  *) exec sleep 300 ;;
esac
"""


def test_a_failed_start_stops_the_components_it_launched(tmp_path):
    stand_in = tmp_path / "airflow"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    stack = AirflowStack(tmp_path / "home", tmp_path / "dags", db="sqlite", scratch=True)
    stack.airflow = str(stand_in)
    with pytest.raises(RuntimeError, match="api-server exited while waiting for api-server health"):
        stack.start(timeout=30)
    scheduler = stack.procs["scheduler"]
    deadline = time.time() + 10
    while scheduler.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert scheduler.poll() is not None, "the scheduler outlived the failed start"
    with pytest.raises(ProcessLookupError):
        os.killpg(scheduler.pid, 0)  # nor anything of its process group
