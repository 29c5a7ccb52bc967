"""A container image the tests build themselves (no registry is reachable): a static busybox as
its whole userland, imported into podman for root and for the accounts of the ssh fleet."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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


REGISTRIES_DROP_IN = Path("/etc/containers/registries.conf.d/flexorch-test-registry.conf")


@dataclass
class Registry:
    """A private image registry on loopback (Debian's docker-registry), with one login."""

    address: str  # host:port, the registry part of image references
    login: str
    password: str
    proc: subprocess.Popen[bytes]

    def image(self, name: str = "flexorch/private:1") -> str:
        return f"{self.address}/{name}"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)
        REGISTRIES_DROP_IN.unlink(missing_ok=True)


def start_registry(base: Path, tar: Path, host: str) -> Registry:
    """Start a registry that needs a login on ``host`` (an address of this machine: the ssh fleet's
    bridge reaches the fleet's namespaces, the worker and Slurm jobs alike), plain HTTP declared
    insecure to podman through a drop-in, and push the test image to it as ``flexorch/private:1``."""
    base.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    login, password = "flexorch-ci", "regi$try-pa55-" + os.urandom(4).hex()
    hashed = subprocess.run(["htpasswd", "-Bbn", login, password], capture_output=True, text=True, check=True).stdout
    (base / "htpasswd").write_text(hashed)
    (base / "config.yml").write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {base / 'data'}}}}}\n"
        f"http: {{addr: {host}:{port}}}\n"
        f"auth: {{htpasswd: {{realm: flexorch-test, path: {base / 'htpasswd'}}}}}\n"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(base / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=open(base / "registry.log", "ab"), start_new_session=True)  # fmt: skip
    address = f"{host}:{port}"
    REGISTRIES_DROP_IN.parent.mkdir(parents=True, exist_ok=True)
    REGISTRIES_DROP_IN.write_text(f'[[registry]]\nlocation = "{address}"\ninsecure = true\n')
    registry = Registry(address, login, password, proc)
    deadline = time.time() + 15
    while True:
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
        except urllib.error.HTTPError as e:
            if e.code == 401:
                break  # up, and asking for the login
        except OSError:
            pass
        if time.time() > deadline:
            registry.stop()
            raise RuntimeError(f"the test registry did not answer on {address}: {base / 'registry.log'}")
        time.sleep(0.1)
    import_image(tar)
    for argv in (
        ["podman", "--log-level", "error", "tag", IMAGE, registry.image()],
        ["podman", "--log-level", "error", "push", "-q", "--creds", f"{login}:{password}", registry.image()],
        ["podman", "--log-level", "error", "rmi", registry.image()],  # so a job must pull it
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            registry.stop()
            raise RuntimeError(f"{' '.join(argv[:4])} failed: {done.stderr.strip()[-500:]}")
    return registry
