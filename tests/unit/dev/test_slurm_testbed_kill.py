"""The test bed's Slurm is stopped by the pids in its own pid files, never by name: a slurmctld of
someone else's on the machine survives `flexorch up --demo-targets` and the test suite (real
processes named slurmctld and slurmd, copies of sleep)."""

from __future__ import annotations

import shutil
import subprocess
import time

from flexorch_provider.dev.testbed import slurm


def _daemon(tmp_path, name: str) -> subprocess.Popen[bytes]:
    binary = tmp_path / "bin" / name
    binary.parent.mkdir(exist_ok=True)
    shutil.copy(shutil.which("sleep"), binary)
    return subprocess.Popen([str(binary), "300"])


def test_only_the_daemons_of_its_own_pid_files_are_killed(tmp_path):
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    ours_dir.mkdir()
    theirs_dir.mkdir()
    ours = {name: _daemon(ours_dir, name) for name in ("slurmctld", "slurmd")}
    theirs = _daemon(theirs_dir, "slurmctld")  # a real Slurm of someone else's
    try:
        for name, proc in ours.items():
            (ours_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        (theirs_dir / "slurmd.pid").write_text(f"{theirs.pid}\n")  # a pid file naming another program
        slurm._kill_ours(ours_dir)
        slurm._kill_ours(theirs_dir)
        time.sleep(0.2)
        assert all(p.poll() is not None for p in ours.values())
        assert theirs.poll() is None  # not a slurmd: left alone
    finally:
        for p in [*ours.values(), theirs]:
            p.kill()
            p.wait()
