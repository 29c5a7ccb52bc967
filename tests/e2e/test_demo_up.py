"""`flexorch up` (what scripts/demo.sh runs): start, run the local example, log in, Ctrl-C.

The demo must leave nothing behind: after SIGINT every process that carries its
AIRFLOW_HOME is gone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from flexorch_provider.devstack import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]


def processes_with_home(home: Path) -> list[int]:
    found = []
    needle = f"AIRFLOW_HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_up_runs_the_example_prints_the_login_and_stops_on_ctrl_c(tmp_path):
    home = tmp_path / "demo"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["FLEXORCH_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "flexorch"), "up", "--specs", str(ROOT / "spec_examples"),
         "--home", str(home), "--port", str(port), "--run", "hello-local"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(240), "".join(lines)[-4000:]
        out = "".join(lines)
        assert "==> hello-local: success" in out, out
        assert "[batch] step 5" in out  # the job's own log streamed to the terminal
        assert f"Airflow UI:  http://127.0.0.1:{port}" in out
        password = re.search(r"log in as:\s+admin / (\S+)", out).group(1)  # type: ignore[union-attr]
        # the printed credentials work
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/auth/token",
            data=json.dumps({"username": "admin", "password": password}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["access_token"]
        assert processes_with_home(home), "the stack should be running"
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    out = "".join(lines)
    assert rc == 0, out[-3000:]
    assert "==> stopped" in out
    deadline = time.time() + 10
    while processes_with_home(home) and time.time() < deadline:
        time.sleep(0.5)
    assert processes_with_home(home) == []
