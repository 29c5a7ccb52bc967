"""A fleet of real sshd "hosts" on loopback, started by the tests.

Each host is its own ``sshd`` (own port, own pid) that admits exactly one Unix account,
``flexorch-hN``, so each host also has its own home directory — what separate machines
would give us. Killing a host kills its sshd and every process of its account, like a
machine that loses power. One Airflow connection (key file, no host key check) serves
the whole fleet; spec host entries carry ``user@127.0.0.1:port``.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_user(name: str) -> Path:
    try:
        return Path(pwd.getpwnam(name).pw_dir)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
        subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)  # unlocked, no password
        return Path(pwd.getpwnam(name).pw_dir)


@dataclass
class SshHost:
    index: int
    user: str
    home: Path
    port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def entry(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.config.with_suffix(".log"), "ab"),
            start_new_session=True,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd for {self.user} did not listen on {self.port}: {self.config.with_suffix('.log')}")

    def processes(self, pattern: str = "") -> list[str]:
        """Command lines of this host's account, optionally filtered by a substring."""
        out = subprocess.run(["ps", "-u", self.user, "-o", "pid=,stat=,args="], capture_output=True, text=True)
        rows = [r.strip() for r in out.stdout.splitlines() if r.strip()]
        return [r for r in rows if pattern in r and r.split()[1][0] != "Z"]

    def kill(self) -> None:
        """The host goes down: its sshd and everything its account runs die at once."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        subprocess.run(["pkill", "-KILL", "-u", self.user], capture_output=True)

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None
        subprocess.run(["pkill", "-KILL", "-u", self.user], capture_output=True)


@dataclass
class SshFleet:
    base: Path
    key_file: Path
    hosts: list[SshHost] = field(default_factory=list)

    def connection_json(self) -> str:
        return json.dumps(
            {"conn_type": "ssh", "host": "127.0.0.1",
             "extra": {"key_file": str(self.key_file), "no_host_key_check": True}}
        )  # fmt: skip

    def entries(self, n: int | None = None) -> list[str]:
        return [h.entry for h in self.hosts[: n or len(self.hosts)]]

    def stop(self) -> None:
        for h in self.hosts:
            h.stop()


def start_fleet(base: Path, count: int) -> SshFleet:
    base.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    host_key, key = base / "host_key", base / "id_ed25519"
    for path in (host_key, key):
        if not path.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    keys = base / "authorized"
    keys.mkdir(exist_ok=True)
    fleet = SshFleet(base, key)
    for i in range(1, count + 1):
        user = f"flexorch-h{i}"
        home = ensure_user(user)
        (keys / user).write_text((base / "id_ed25519.pub").read_text())
        port = _free_port()
        config = base / f"sshd-{i}.conf"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {base}/sshd-{i}.pid",
                    f"AuthorizedKeysFile {keys}/%u", "UsePAM no", "StrictModes no", "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", f"AllowUsers {user}",
                    "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 100", "MaxSessions 100", "",
                ]
            )
        )  # fmt: skip
        host = SshHost(i, user, home, port, config)
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)  # leftovers of an earlier run
        host.start()
        fleet.hosts.append(host)
    return fleet
