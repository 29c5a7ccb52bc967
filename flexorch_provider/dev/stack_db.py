"""The embedded stack's metadata database: a private PostgreSQL server, SQLite as the fallback.

:func:`choose` picks what ``flexorch up`` and the end-to-end tests run on:

- ``postgres``: a server of its own for this stack — ``initdb`` into a data folder, a Unix
  socket in that folder and no TCP port (``listen_addresses = ''``), trust for whoever can
  reach the socket (the folder is 0700: the server's account, and root). Found in Debian's
  ``postgresql`` package (``/usr/lib/postgresql/<major>/bin``) or on PATH. PostgreSQL refuses
  to run as root, so as root the server runs as the ``postgres`` account the package made,
  and its data folder lives where that account can reach it.
- ``sqlite``: one file, for trying things out where no PostgreSQL is installed; a CLI command
  that writes while the scheduler writes can fail with "database is locked".

``auto`` (the default) is postgres where it can run, else sqlite, saying why.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from flexorch_provider.exceptions import ConfigurationError

KINDS = ("auto", "postgres", "sqlite")
DB_ENV = "FLEXORCH_STACK_DB"  # auto | postgres | sqlite: what the embedded stack runs on
ROOT_DATA = Path("/var/lib/flexorch/postgres")  # as root, where the postgres account can reach
SOCKET_PATH_MAX = 100  # a Unix socket path longer than ~107 bytes cannot be bound
HOME_MARK = "flexorch-home"  # in a data folder: the stack home it belongs to
DATABASE = "airflow"
ROLE = "airflow"
# Four components share one SQLite file: on a small machine a writer can hold the lock for
# longer than SQLite's default 5 s wait, and the loser fails with "database is locked".
SQLITE_CONNECT_ARGS = {"timeout": 30}
SQLITE_CONNECT_ARGS_ASYNC = {"timeout": 30}  # its own dict: Airflow adds sync-only keys to the other


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (Debian's layout first, then PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: _major(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None


def _major(name: str) -> int:
    return int(name) if name.isdigit() else -1


def _drivers_missing() -> list[str]:
    import importlib.util

    return [m for m in ("psycopg2", "asyncpg") if importlib.util.find_spec(m) is None]


def _server_account() -> str | None:
    """The account the server runs as: None for this process's own, ``postgres`` as root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return ""  # root without a postgres account: cannot run a server
    return "postgres"


def why_not_postgres() -> str | None:
    """None if a private PostgreSQL can run here, else what is missing and how to get it."""
    if postgres_bindir() is None:
        return "no PostgreSQL server is installed (Debian: apt-get install postgresql)"
    missing = _drivers_missing()
    if missing:
        return f"the Python drivers {', '.join(missing)} are missing (pip install 'flexorch-provider[postgres]')"
    if _server_account() == "":
        return "running as root and there is no 'postgres' account for the server to run as"
    return None


@dataclass
class Database:
    """What the stack's Airflow components are told (``[database]`` settings) and how to stop it."""

    kind: str
    env: dict[str, str]
    server: Postgres | None = None
    fallback_reason: str | None = None  # why auto chose sqlite

    def start(self) -> None:
        if self.server is not None:
            self.server.start()

    def stop(self, remove: bool = False) -> None:
        if self.server is None:
            return
        if remove:
            self.server.remove()
        else:
            self.server.stop()

    def describe(self) -> str:
        if self.server is not None:
            return f"PostgreSQL {self.server.version()} (data in {self.server.data})"
        return "SQLite" + (f" ({self.fallback_reason})" if self.fallback_reason else "")


def choose(home: Path, kind: str | None = None) -> Database:
    """The database for a stack in ``home``: ``kind`` (or $FLEXORCH_STACK_DB, default auto)."""
    kind = (kind or os.environ.get(DB_ENV) or "auto").lower()
    if kind not in KINDS:
        raise ConfigurationError(f"unknown stack database {kind!r}: use one of {', '.join(KINDS)}")
    problem = why_not_postgres() if kind != "sqlite" else None
    if kind == "postgres" and problem:
        raise ConfigurationError(f"cannot run the stack on PostgreSQL: {problem}; or choose sqlite")
    if kind == "sqlite" or problem:
        return replace(sqlite(home), fallback_reason=problem)
    server = Postgres(home)
    return Database("postgres", server.airflow_env(), server)


def sqlite(home: Path) -> Database:
    return Database(
        "sqlite",
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "flexorch_provider.dev.stack_db.SQLITE_CONNECT_ARGS",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "flexorch_provider.dev.stack_db.SQLITE_CONNECT_ARGS_ASYNC",
        },
    )


class Postgres:
    """One private PostgreSQL server for one stack home (see the module docstring).

    The data folder is ``<home>/postgres`` where the server's account can reach it, else (root,
    and a home the ``postgres`` account cannot enter, e.g. under /root or pytest's 0700 temp
    folders) ``/var/lib/flexorch/postgres/<hash of home>``; ``<home>/postgres.location`` names
    it either way."""

    def __init__(self, home: Path) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise ConfigurationError("no PostgreSQL server is installed (Debian: apt-get install postgresql)")
        self.home = home
        self.bindir = bindir
        self.account = _server_account()
        self.data = self._data_folder()
        self.socket_dir = self._socket_folder()

    # --- where ---------------------------------------------------------------------------
    def _data_folder(self) -> Path:
        mine = self.home / "postgres"
        if self.account is None or self._reachable(self.home):
            return mine
        return ROOT_DATA / hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:16]

    def _reachable(self, folder: Path) -> bool:
        """Can the server's account enter ``folder`` (every parent searchable)?"""
        assert self.account is not None
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # it will be made: what matters is what is above it
        done = subprocess.run(["runuser", "-u", self.account, "--", "test", "-x", str(folder)], capture_output=True)
        return done.returncode == 0

    def _socket_folder(self) -> Path:
        if len(str(self.data / ".s.PGSQL.5432")) <= SOCKET_PATH_MAX:
            return self.data
        short = Path(tempfile.gettempdir()) / f"fxpg-{hashlib.sha256(str(self.data).encode()).hexdigest()[:12]}"
        return short

    def airflow_env(self) -> dict[str, str]:
        url = f"postgresql+psycopg2://{ROLE}@/{DATABASE}?host={self.socket_dir}"
        return {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"postgresql+asyncpg://{ROLE}@/{DATABASE}?host={self.socket_dir}",
        }

    # --- lifecycle -----------------------------------------------------------------------
    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.account, "--"] if self.account else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False)

    def _own(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
        if self.account:
            entry = pwd.getpwnam(self.account)
            os.chown(folder, entry.pw_uid, entry.pw_gid)

    def version(self) -> str:
        try:
            return (self.data / "PG_VERSION").read_text().strip()
        except OSError:
            return self.bindir.parent.name

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "postgres.location").write_text(f"{self.data}\n", encoding="utf-8")
        if self.data.parent == ROOT_DATA:
            ROOT_DATA.mkdir(parents=True, exist_ok=True)
            ROOT_DATA.chmod(0o755)
            _sweep_orphans(self)
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            shutil.rmtree(self.data, ignore_errors=True)  # a half-made folder from an interrupted initdb
            self._own(self.data)
            done = self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                ROLE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            )
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed in {self.data}: {done.stderr.strip()[-1500:]}")
            (self.data / HOME_MARK).write_text(f"{self.home.resolve()}\n", encoding="utf-8")
        if self.socket_dir != self.data:
            self._own(self.socket_dir)
        self._stop_stale()
        options = f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off -c max_connections=200"
        done = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.data / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        if done.returncode != 0:
            log = self.data / "server.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start in {self.data}: {done.stderr.strip()}\n{tail}")
        if fresh:
            done = self._run(str(self.bindir / "createdb"), "-h", str(self.socket_dir), "-U", ROLE, DATABASE)
            if done.returncode != 0:
                raise RuntimeError(f"createdb {DATABASE} failed: {done.stderr.strip()}")

    def _stop_stale(self) -> None:
        """A server an earlier run left running on this data folder (killed with -9) is stopped first."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def remove(self) -> None:
        """Stop and delete the data folder (the tests' stacks, which start from nothing); the server's
        log is kept as ``<home>/postgres.log``."""
        self.stop()
        with contextlib.suppress(OSError):
            shutil.copy(self.data / "server.log", self.home / "postgres.log")
        shutil.rmtree(self.data, ignore_errors=True)
        if self.socket_dir != self.data:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def _sweep_orphans(current: Postgres) -> None:
    """Data folders under ROOT_DATA whose stack home is gone (a deleted test folder): their server
    is stopped and the folder removed, so they do not pile up."""
    for data in ROOT_DATA.iterdir():
        if data == current.data:
            continue
        try:
            home = Path((data / HOME_MARK).read_text(encoding="utf-8").strip())
        except OSError:
            continue  # not ours, or being made right now
        if home.exists():
            continue
        if (data / "postmaster.pid").exists():
            current._run(str(current.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)
