"""Code that travels with a job: sending a project folder to an ssh host, against scp and rsync.

A real sshd host in its own network namespace (the test suite's fleet; needs root, openssh-server
and rsync). The project: ``--files`` small source files plus a few larger ones, and a git-ignored
checkpoint that nothing should send. Measured, each with cold connections:

- first send: flexorch packs the folder (.gitignore applied, digest, deterministic tar) and sends it
  through the job runner, which checks the digest and keeps it; ``scp -r`` and ``rsync -a`` of the
  same files (the checkpoint excluded for them too) into a fresh folder (baseline: scp);
- re-send of unchanged code: flexorch packs again and asks the host (one round trip: "already
  there"); rsync compares the trees and sends nothing.

    .venv/bin/python bench/code_ship.py [--files 400] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexorch_provider.backends import ssh, sshpool
from flexorch_provider.backends.base import ship_code
from flexorch_provider.code import collect
from flexorch_provider.dev.testbed.fleet import start_fleet

CONN = "flexorch_bench_code"


def project(root: Path, files: int) -> Path:
    """A training project: small sources in folders, a few bigger files, an ignored checkpoint."""
    rng = __import__("random").Random(7)
    for i in range(files):
        path = root / f"pkg{i % 8}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"x_{i}_{k} = {rng.random()!r}\n" for k in range(60)))
    for i in range(3):
        (root / "data").mkdir(exist_ok=True)
        (root / "data" / f"vocab_{i}.txt").write_bytes(os.urandom(512 * 1024))
    (root / "train.py").write_text("print('train')\n")
    (root / ".gitignore").write_text("checkpoints/\n")
    (root / "checkpoints").mkdir()
    with open(root / "checkpoints" / "last.pt", "wb") as f:
        f.truncate(200 * 2**20)
    return root


def ssh_options(key: Path) -> list[str]:
    return ["-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]  # fmt: skip


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def flexorch_send(root: Path, host: sshpool.Host) -> tuple[float, str]:
    sshpool.forget_all()
    started = time.perf_counter()
    bundle = collect(root, [], 2**30)
    notes = ship_code(bundle, lambda a, d: ssh.runner(CONN, host, *a, stdin=d), host.label)
    return time.perf_counter() - started, notes[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="flexorch-bench-code-"))
    base.chmod(0o755)
    fleet = start_fleet(base / "fleet", 1, account_prefix="flexorch-bc")
    os.environ[f"AIRFLOW_CONN_{CONN.upper()}"] = fleet.connection_json()
    h = fleet.hosts[0]
    host = sshpool.Host.parse(h.entry)
    key = fleet.key_file
    first: dict[str, list[float]] = {"flexorch": [], "scp": [], "rsync": []}
    again: dict[str, list[float]] = {"flexorch": [], "rsync": []}
    said = ""
    try:
        for i in range(args.repeat):
            root = project(base / f"project-{i}", args.files)  # new content each round: a first send
            (root / "train.py").write_text(f"print('train {i}')\n")
            sent = [p for p in root.rglob("*") if p.is_file() and "checkpoints" not in p.parts]
            seconds, said = flexorch_send(root, host)
            first["flexorch"].append(seconds)
            subprocess.run(["ssh", *ssh_options(key), h.entry, "mkdir", "-p", f"scp-{i}"], check=True)
            first["scp"].append(timed(["scp", "-q", "-r", *ssh_options(key),
                                       *[str(p) for p in root.iterdir() if p.name != "checkpoints"],
                                       f"{h.entry}:scp-{i}/"]))  # fmt: skip
            rsync = ["rsync", "-a", "--exclude", "checkpoints/", "-e", " ".join(["ssh", *ssh_options(key)]),
                     f"{root}/", f"{h.entry}:rsync-{i}/"]  # fmt: skip
            first["rsync"].append(timed(rsync))
            again["flexorch"].append(flexorch_send(root, host)[0])
            again["rsync"].append(timed(rsync))
            assert len(sent) == args.files + 5, len(sent)
    finally:
        sshpool.forget_all()
        fleet.stop()
        shutil.rmtree(base, ignore_errors=True)
    m = {k: statistics.median(v) for k, v in first.items()}
    r = {k: statistics.median(v) for k, v in again.items()}
    print(f"{args.files + 5} files, a 200 MiB git-ignored checkpoint beside them; median of {args.repeat}; {said}")
    print(f"{'first send: scp -r':<44}{m['scp']:>8.3f} s   1.00× (baseline)")
    print(f"{'first send: rsync -a':<44}{m['rsync']:>8.3f} s {m['rsync'] / m['scp']:>6.2f}× scp")
    print(
        f"{'first send: flexorch (pack, digest, send)':<44}{m['flexorch']:>8.3f} s {m['flexorch'] / m['scp']:>6.2f}× scp"
    )
    print(f"{'unchanged again: rsync -a':<44}{r['rsync']:>8.3f} s {r['rsync'] / m['scp']:>6.2f}× scp")
    print(f"{'unchanged again: flexorch (pack, ask)':<44}{r['flexorch']:>8.3f} s {r['flexorch'] / m['scp']:>6.2f}× scp, "
          f"{r['flexorch'] / r['rsync']:.2f}× rsync")  # fmt: skip
    print("unchanged again, flexorch sends no bytes of code: the host has the digest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
