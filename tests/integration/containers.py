"""A container image the tests build themselves (no registry is reachable): a static busybox as
its whole userland, imported into podman for root and for the accounts of the ssh fleet."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

IMAGE = "localhost/flexorch-test:1"
APPLETS = (
    "sh",
    "echo",
    "sleep",
    "cat",
    "env",
    "ls",
    "true",
    "false",
    "printf",
    "id",
    "pwd",
    "test",
    "[",
    "kill",
    "httpd",
)


def image_tarball() -> Path:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeError("the test image needs /bin/busybox (Debian busybox-static; scripts/system-deps.sh)")
    root = Path(tempfile.mkdtemp(prefix="flexorch-image-"))
    (root / "bin").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("tmp", "etc", "proc", "sys", "dev"):
        (root / d).mkdir()
    tar = root.parent / f"{root.name}.tar"
    with tarfile.open(tar, "w") as t:
        for item in sorted(root.iterdir()):
            t.add(item, arcname=item.name)
    tar.chmod(0o644)
    shutil.rmtree(root)
    return tar


def import_image(tar: Path, user: str | None = None) -> None:
    """``podman import`` for root, or (rootless) for ``user`` with that account's own image store."""
    argv = ["podman", "--log-level", "error", "import", "-q", str(tar), IMAGE]
    if user is not None:
        home = f"/home/{user}"
        argv = ["runuser", "-u", user, "--", "env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", f"USER={user}", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/tmp")
    if done.returncode != 0:
        raise RuntimeError(f"podman import for {user or 'root'} failed: {done.stderr.strip()[-500:]}")


def containers(user: str | None = None, name_part: str = "flexorch-") -> list[str]:
    """Names of the containers (any state) whose name holds ``name_part``."""
    argv = ["podman", "--log-level", "error", "ps", "-a", "--format", "{{.Names}}"]
    if user is not None:
        argv = ["runuser", "-u", user, "--", "env", "-i", "PATH=/usr/bin:/bin", f"HOME=/home/{user}", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/tmp").stdout
    return [n for n in out.split() if name_part in n]


def podman_ready() -> str | None:
    """Why podman cannot run the tests here, or None."""
    if os.geteuid() != 0:
        return "the container tests need root (rootful podman, runuser for the fleet's accounts)"
    if not shutil.which("podman"):
        return "podman is not installed (scripts/system-deps.sh installs it)"
    return None
