"""SSH connections to fleet hosts: host entries, one pooled session per host, commands on it.

Used by the ssh target, the Slurm target (its login node) and the GPU inventory::

    on_host(conn_id, host, lambda s: s.exec(argv, stdin))   # a pooled session; a stale one is replaced once
    session(conn_id, host) / forget(conn_id, host) / forget_all()
    reachable(conn_id, host)                                # proof of life

A :class:`Session` is one paramiko connection from apache-airflow-providers-ssh's
``SSHHook``; commands are argv lists, quoted word by word, never user values. Failures are
:class:`~flexorch_provider.exceptions.HostError`.
"""

from __future__ import annotations

import logging
import shlex
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flexorch_provider.exceptions import ConfigurationError, HostError
from flexorch_provider.fanout import reason
from flexorch_provider.spec.targets import HOST_ENTRY_RE


class _QuietParamiko(logging.Filter):
    """paramiko says at INFO, for every connection and every file copy, that it connected,
    authenticated and opened or closed an sftp channel: one line per host per job in task logs
    and, at scale, in the triggerer's. Those lines are dropped; its warnings and errors stay."""

    CHATTER = ("Connected (version", "Authentication (", "Opened sftp connection", "sftp session closed")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        return not any(c in message for c in self.CHATTER)


for _name in ("paramiko.transport", "paramiko.transport.sftp"):
    if not any(isinstance(f, _QuietParamiko) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_QuietParamiko())

CONNECT_TIMEOUT = 5
COMMAND_TIMEOUT = 60
T = TypeVar("T")


@dataclass(frozen=True)
class Host:
    """One fleet member: ``user@host:port``; unset parts come from the Airflow connection."""

    host: str | None = None
    port: int | None = None
    user: str | None = None

    @classmethod
    def parse(cls, entry: str) -> Host:
        m = HOST_ENTRY_RE.match(entry)
        if not m:
            raise ConfigurationError(f"{entry!r} is not a host entry ('host', 'host:port', 'user@host:port')")
        port = m.group("port")
        return cls(m.group("host") or m.group("ipv6"), int(port) if port else None, m.group("user"))

    @property
    def label(self) -> str:
        text = self.host or "<connection host>"
        if ":" in text:
            text = f"[{text}]"
        return f"{self.user + '@' if self.user else ''}{text}{f':{self.port}' if self.port else ''}"


def connect_failure(e: BaseException) -> str:
    """Why a connection failed, in words (paramiko's own text reads "[Errno None] Unable to ...")."""
    import socket

    import paramiko

    if isinstance(e, paramiko.AuthenticationException):
        return "authentication failed: check the connection's login and key"
    if isinstance(e, paramiko.BadHostKeyException):
        return (
            "the host's key is not the one the connection's host_key (or known_hosts) names: a reinstalled host "
            "or a man in the middle; check the host, then update the connection"
        )
    if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
        return (
            "its host key is unknown: put it in the connection's host_key extra or the worker's "
            "~/.ssh/known_hosts (no_host_key_check: true connects unverified)"
        )
    if isinstance(e, socket.timeout | TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT} s (host down or a firewall)"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        causes = {type(err).__name__ if not err.strerror else err.strerror.lower() for err in e.errors.values()}
        return f"{', '.join(sorted(causes))} on port {next(iter(e.errors))[1]}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return reason(e)


ALIASES_EXTRA = "host_aliases"


def dial_address(conn_id: str, host: Host) -> Host:
    """Where to dial for a spec's host entry. The connection's extra ``host_aliases`` maps a host
    name to ``user@address:port`` (any part may be left out): the spec names the hosts, the
    connection says how this Airflow reaches them (one spec, a staging and a production fleet).
    What the alias leaves out comes from the entry, then from the connection."""
    if not host.host:
        return host
    from airflow.sdk import BaseHook

    aliases = BaseHook.get_connection(conn_id).extra_dejson.get(ALIASES_EXTRA) or {}
    if not isinstance(aliases, dict):
        raise ConfigurationError(
            f"the connection {conn_id!r} extra {ALIASES_EXTRA!r} must map host names to 'user@address:port'"
        )
    target = aliases.get(host.host)
    if target is None:
        return host
    try:
        alias = Host.parse(str(target))
    except ConfigurationError as e:
        raise ConfigurationError(f"the connection {conn_id!r} extra {ALIASES_EXTRA}[{host.host!r}]: {e}") from None
    return Host(alias.host or host.host, alias.port or host.port, alias.user or host.user)


class Session:
    """One SSH connection to one host, reused across polls (paramiko channels are thread-safe)."""

    def __init__(self, conn_id: str, host: Host) -> None:
        from airflow.providers.ssh.hooks.ssh import SSHHook

        try:
            dial = dial_address(conn_id, host)
            hook = SSHHook(
                ssh_conn_id=conn_id,
                remote_host=dial.host or "",
                port=dial.port,
                username=dial.user,
                conn_timeout=CONNECT_TIMEOUT,
                conn_retry_attempts=1,
                keepalive_interval=15,
            )
        except ConfigurationError:
            raise
        except Exception as e:
            if type(e).__name__ == "AirflowNotFoundException":
                raise ConfigurationError(
                    f"the Airflow connection {conn_id!r} does not exist; create it (type ssh, with login and key) "
                    f"or set ssh.connection in the spec"
                ) from None
            raise HostError(f"{host.label}: the SSH connection {conn_id!r} cannot be used: {reason(e)}") from e
        # a host left to the connection is named by the address the connection dials
        self.label = host.label if host.host else Host(hook.remote_host or None, hook.port, hook.username).label
        try:
            self.client = hook.get_conn()
        except Exception as e:  # paramiko, socket and auth errors
            raise HostError(f"{self.label}: cannot connect: {connect_failure(e)}") from e
        self.installed: set[str] = set()  # files known to be on the host: installed, or used, by this session
        self.used = False  # a fresh connection is proof of life; a pooled one needs a command
        self.lock = threading.Lock()

    @property
    def alive(self) -> bool:
        transport = self.client.get_transport()
        return bool(transport and transport.is_active())

    def exec(
        self, argv: Sequence[str], stdin: bytes | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> tuple[int, str, str]:
        """Run ``argv`` (quoted word by word) → (exit code, stdout, stderr); HostError if the host fails us."""
        self.used = True
        command = shlex.join(argv)
        try:
            transport = self.client.get_transport()
            assert transport is not None
            channel = transport.open_session(timeout=CONNECT_TIMEOUT)
            channel.settimeout(timeout)
            channel.exec_command(command)
            try:
                if stdin is not None:
                    channel.sendall(stdin)
                channel.shutdown_write()
            except OSError:
                # the command ended before reading its input (a runner not installed yet exits at once:
                # saying so); its exit status and stderr below say what happened
                if not channel.exit_status_ready():
                    raise
            stdout = channel.makefile("rb").read()
            stderr = channel.makefile_stderr("rb").read()
            code = channel.recv_exit_status()
            channel.close()
        except Exception as e:
            raise HostError(f"{self.label}: {reason(e)}") from e
        return code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")

    def run(self, argv: Sequence[str], stdin: bytes | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run ``argv`` (quoted; never user values) and return stdout; a non-zero exit is a HostError."""
        code, stdout, stderr = self.exec(argv, stdin, timeout)
        if code != 0:
            raise self.failed(argv, code, stderr)
        return stdout

    def failed(self, argv: Sequence[str], code: int, stderr: str) -> HostError:
        """The error for ``argv`` having exited ``code``: the command's first words and the end of stderr."""
        tail = stderr.strip()[-500:]
        return HostError(f"{self.label}: `{argv[0]} {' '.join(argv[1:3])}` exited {code}: {tail or 'no output'}")

    def install(self, path: str, data: bytes, what: str) -> None:
        """Copy ``data`` to ``path`` (relative to the login's home) unless it is there already:
        parent directories 0700, the file 0600, written under a temp name and renamed. Once per
        session and path; ``what`` names it in the error."""
        if path in self.installed:
            return
        with self.lock:
            if path in self.installed:
                return
            try:
                sftp = self.client.open_sftp()
                try:
                    try:
                        sftp.stat(path)
                    except OSError:
                        parts = path.split("/")[:-1]
                        for i in range(1, len(parts) + 1):
                            try:
                                sftp.mkdir("/".join(parts[:i]), 0o700)
                            except OSError:
                                pass  # exists
                        tmp = f"{path}.{threading.get_ident()}.tmp"
                        with sftp.open(tmp, "wb") as f:
                            f.write(data)
                        sftp.chmod(tmp, 0o600)
                        sftp.posix_rename(tmp, path)
                finally:
                    sftp.close()
            except Exception as e:
                raise HostError(f"{self.label}: cannot install {what}: {reason(e)}") from e
            self.installed.add(path)


_POOL: dict[tuple[str, Host], Session] = {}
_POOL_LOCK = threading.Lock()


def session(conn_id: str, host: Host) -> Session:
    """The pooled session to ``host`` through connection ``conn_id``; a new one if there is none or it died."""
    key = (conn_id, host)
    with _POOL_LOCK:
        existing = _POOL.get(key)
    if existing is not None and existing.alive:
        return existing
    fresh = Session(conn_id, host)
    with _POOL_LOCK:
        _POOL[key] = fresh
    return fresh


def forget(conn_id: str, host: Host) -> None:
    """Close and drop the pooled session to ``host`` (the next use connects afresh)."""
    with _POOL_LOCK:
        old = _POOL.pop((conn_id, host), None)
    if old is not None:
        old.client.close()


def forget_all() -> None:
    """Close every pooled session."""
    with _POOL_LOCK:
        keys = list(_POOL)
    for conn_id, host in keys:
        forget(conn_id, host)


def on_host(conn_id: str, host: Host, action: Callable[[Session], T]) -> T:
    """Run ``action`` on a pooled session; a stale pooled connection is replaced once."""
    s = session(conn_id, host)
    try:
        return action(s)
    except HostError:
        if s.alive:
            raise
        forget(conn_id, host)
        return action(session(conn_id, host))


def reachable(conn_id: str, host: Host) -> dict[str, Any]:
    """Proof of life: a connection made just now, or a trivial command on a pooled one ({}; HostError if not)."""
    s = session(conn_id, host)
    if s.used:
        try:
            s.run(["true"], timeout=CONNECT_TIMEOUT)
        except HostError:
            forget(conn_id, host)
            session(conn_id, host)
    s.used = True
    return {}
