"""A fleet of real sshd "hosts" on this machine, each in its own network namespace: the ssh
target of the demo (``flexorch up --demo-targets``) and of the test suite.

Each host is a network namespace with its own address (``10.N.0.11``, ``.12``, ... on a
bridge in the test's own namespace) running its own ``sshd`` on port 22 that admits exactly
one Unix account, ``flexorch-hN``, so each host also has its own home directory — what
separate machines would give us. Everything a host runs lives in its namespace: two hosts
can both listen on port 8000, and a health check to ``127.0.0.1`` on one host does not see
the other. Killing a host kills its sshd and every process of its account, like a machine
that loses power. One Airflow connection (key file, no host key check) serves the whole
fleet; spec host entries carry ``user@10.N.0.1x``.

Only loopback and namespaces this module created are ever addressed. Needs root (``ip
netns``, ``useradd``).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
STAND_IN = Path(__file__).with_name("nvidia-smi-stand-in.sh")  # nvidia-smi answering from recorded CSV
TAG = f"fx{os.getpid() % 100000}"  # names of this run's namespaces and links (≤ 15 chars)


def _free_subnet() -> str:
    """``10.N.0`` for this process's bridge: N from the pid, moved on while another fleet (the demo's,
    a test run's) has that subnet already."""
    try:
        used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    except OSError:
        used = ""
    for k in range(50):
        subnet = f"10.{200 + (os.getpid() + k) % 50}.0"
        if f" {subnet}." not in used:
            return subnet
    return f"10.{200 + os.getpid() % 50}.0"


SUBNET = _free_subnet()


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()} (the ssh fleet needs root and iproute2)")


def _remove_stale_namespaces() -> None:
    """Namespaces and bridges of earlier test runs whose process is gone."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
    bridges = re.findall(r"^\d+: (fx\d+br)[:@]", links, re.M)
    for name in [n for n in names if re.fullmatch(r"fx\d+h\d+", n)] + bridges:
        m = re.match(r"fx(\d+)", name)
        if m is None:
            continue
        pid = int(m.group(1))
        if name.startswith(TAG) or any(int(p) % 100000 == pid for p in os.listdir("/proc") if p.isdigit()):
            continue
        if name in bridges:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        else:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


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
    address: str
    namespace: str
    config: Path
    bin_dir: Path | None = None  # first on the host's PATH (test stand-ins, e.g. nvidia-smi)
    port: int = 22
    proc: subprocess.Popen[bytes] | None = None

    @property
    def entry(self) -> str:
        return f"{self.user}@{self.address}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            # nsenter enters the network namespace only: `ip netns exec` would also remount /sys without
            # the cgroup mounts, which a real host has (rootless podman needs them)
            ["nsenter", f"--net=/run/netns/{self.namespace}", SSHD, "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.config.with_suffix(".log"), "ab"),
            start_new_session=True,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex((self.address, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd for {self.user} did not listen on {self.address}: {self.config.with_suffix('.log')}")

    def fake_nvidia_smi(self, gpus_csv: str | None, apps_csv: str = "") -> None:
        """Put the test stand-in for nvidia-smi on this host's PATH, answering with the recorded
        CSV (nvidia-smi's own format); ``None`` takes it away."""
        assert self.bin_dir is not None
        stand_in = self.bin_dir / "nvidia-smi"
        if gpus_csv is None:
            stand_in.unlink(missing_ok=True)
            return
        stand_in.write_text(STAND_IN.read_text())
        stand_in.chmod(0o755)
        for name, text in (("nvidia-smi-gpus.csv", gpus_csv), ("nvidia-smi-apps.csv", apps_csv)):
            (self.home / name).write_text(text)
            (self.home / name).chmod(0o644)

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

    def _extra(self) -> dict[str, object]:
        """The client key, and the hosts' key verified: every host of the fleet has the same one."""
        host_key = (self.base / "host_key.pub").read_text().split()
        return {"key_file": str(self.key_file), "host_key": " ".join(host_key[:2]), "no_host_key_check": False}

    def connection_json(self) -> str:
        return json.dumps(
            {
                "conn_type": "ssh",
                "host": "127.0.0.1",
                "extra": self._extra(),
            }
        )

    def login_connection_json(self, host: SshHost) -> str:
        """A connection to one host (a Slurm login node): host and login in the connection itself."""
        return json.dumps(
            {
                "conn_type": "ssh",
                "host": host.address,
                "login": host.user,
                "extra": self._extra(),
            }
        )

    def entries(self, n: int | None = None) -> list[str]:
        return [h.entry for h in self.hosts[: n or len(self.hosts)]]

    def stop(self) -> None:
        for h in self.hosts:
            h.stop()
            subprocess.run(["ip", "netns", "del", h.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{TAG}br"], capture_output=True)


def _remove_job_containers(user: str) -> None:
    """Remove the account's containers made by the job runner (their run-key label), were any left."""
    if not shutil.which("podman"):
        return
    env = ["env", "-i", "PATH=/usr/bin:/bin", f"HOME=/home/{user}"]
    podman = ["runuser", "-u", user, "--", *env, "podman", "--log-level", "error"]
    found = subprocess.run(
        [*podman, "ps", "-aq", "--filter", "label=io.flexorch.run-key"],
        capture_output=True,
        text=True,
        cwd="/tmp",
        timeout=60,
    ).stdout.split()
    if found:
        subprocess.run([*podman, "rm", "-f", "-t", "0", *found], capture_output=True, cwd="/tmp", timeout=120)


def start_fleet(base: Path, count: int, account_prefix: str = "flexorch-h") -> SshFleet:
    """``count`` hosts; host N's account is ``<account_prefix>N`` (the demo's are not the tests')."""
    base.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    host_key, key = base / "host_key", base / "id_ed25519"
    for path in (host_key, key):
        if not path.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    keys = base / "authorized"
    keys.mkdir(exist_ok=True)
    fleet = SshFleet(base, key)
    _remove_stale_namespaces()
    bridge = f"{TAG}br"
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    _ip("link", "add", bridge, "type", "bridge")
    _ip("addr", "add", f"{SUBNET}.1/24", "dev", bridge)
    _ip("link", "set", bridge, "up")
    for i in range(1, count + 1):
        user = f"{account_prefix}{i}"
        home = ensure_user(user)
        (keys / user).write_text((base / "id_ed25519.pub").read_text())
        namespace, address = f"{TAG}h{i}", f"{SUBNET}.{10 + i}"
        outside, inside = f"{TAG}v{i}", f"{TAG}p{i}"
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        _ip("netns", "add", namespace)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", outside, "master", bridge)
        _ip("link", "set", outside, "up")
        _ip("link", "set", inside, "netns", namespace)
        _ip("-n", namespace, "link", "set", inside, "name", "eth0")  # as on a machine: one name on every host
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        config = base / f"sshd-{i}.conf"
        bin_dir = base / f"bin-h{i}"
        bin_dir.mkdir(exist_ok=True)
        bin_dir.chmod(0o755)
        config.write_text(
            "\n".join(
                [
                    "Port 22",
                    "ListenAddress 0.0.0.0",
                    f"HostKey {host_key}",
                    f"PidFile {base}/sshd-{i}.pid",
                    f"AuthorizedKeysFile {keys}/%u",
                    "UsePAM no",
                    "StrictModes no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    f"AllowUsers {user}",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin",
                    "",
                ]
            )
        )
        host = SshHost(i, user, home, address, namespace, config, bin_dir)
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)  # leftovers of an earlier run
        shutil.rmtree(home / ".flexorch", ignore_errors=True)  # a fresh host: no runner, no runs
        _remove_job_containers(user)  # nor containers of jobs an earlier run's kill left behind
        host.start()
        fleet.hosts.append(host)
    return fleet
