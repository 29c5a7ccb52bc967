"""The shared store: two tables in a PostgreSQL database every Airflow machine reaches, named by an
Airflow connection (``FLEXORCH_STORE_CONN``; conn type ``postgres``: host (or a socket folder),
port, schema = the database, login, password).

- ``flexorch_kv (space, key, value, updated_at)``: keys with JSON values;
- ``flexorch_records (id, space, at, record)``: append-only records.

Tables are created on first use. :meth:`SqlStore.locked` is a transaction holding a PostgreSQL
advisory lock: everything read and written inside it, on this thread, is one step against every
other holder on every machine (a budget check and its charge, a service's read-modify-write).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from flexorch_provider.exceptions import ConfigurationError

DDL = (
    "CREATE TABLE IF NOT EXISTS flexorch_kv (space VARCHAR(64) NOT NULL, key VARCHAR(512) NOT NULL, "
    "value TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (space, key))",
    "CREATE TABLE IF NOT EXISTS flexorch_records (id BIGSERIAL PRIMARY KEY, space VARCHAR(64) NOT NULL, "
    "at DOUBLE PRECISION NOT NULL, record TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS flexorch_records_space_at ON flexorch_records (space, at)",
)
SETUP_LOCK = "flexorch-store-setup"


def lock_id(name: str) -> int:
    """A lock name → a signed 64-bit advisory lock key."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class SqlStore:
    shared = True

    def __init__(self, url: Any, shown: str) -> None:
        from sqlalchemy import create_engine

        self.shown = shown
        self.engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        self._local = threading.local()
        self._ready = False

    @classmethod
    def from_connection(cls, conn_id: str) -> SqlStore:
        from airflow.sdk import BaseHook
        from sqlalchemy.engine import URL

        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception as e:
            raise ConfigurationError(
                f"FLEXORCH_STORE_CONN names the connection {conn_id!r}, which cannot be read here ({e}): create it "
                "(conn type postgres) where every Airflow component reads connections"
            ) from None
        if (conn.conn_type or "").lower() not in ("postgres", "postgresql"):
            raise ConfigurationError(
                f"the flexorch store connection {conn_id!r} is of type {conn.conn_type!r}: it must be postgres"
            )
        url = URL.create(
            "postgresql+psycopg2",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        )
        return cls(url, f"the database of connection {conn_id}")

    def describe(self) -> str:
        return self.shown

    # --- connections -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        """The locked transaction's connection on this thread, else a short transaction of its own."""
        held = getattr(self._local, "conn", None)
        if held is not None:
            yield held
            return
        self._setup()
        with self.engine.begin() as conn:
            yield conn

    def _setup(self) -> None:
        if self._ready:
            return
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id(SETUP_LOCK)})
            for statement in DDL:
                conn.execute(text(statement))
        self._ready = True

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        from sqlalchemy import text

        if getattr(self._local, "conn", None) is not None:
            raise RuntimeError(f"flexorch store: lock {name} taken while another is held on this thread")
        self._setup()
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id(name)})
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    # --- keys --------------------------------------------------------------------------------
    def get(self, space: str, key: str) -> Any | None:
        from sqlalchemy import text

        with self._conn() as conn:
            row = conn.execute(
                text("SELECT value FROM flexorch_kv WHERE space = :s AND key = :k"), {"s": space, "k": key}
            ).first()
        return json.loads(row[0]) if row is not None else None

    def put(self, space: str, key: str, value: Any) -> None:
        from sqlalchemy import text

        with self._conn() as conn:
            conn.execute(
                text(
                    "INSERT INTO flexorch_kv (space, key, value, updated_at) VALUES (:s, :k, :v, :t) "
                    "ON CONFLICT (space, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
                ),
                {"s": space, "k": key, "v": json.dumps(value), "t": time.time()},
            )

    def delete(self, space: str, key: str) -> None:
        from sqlalchemy import text

        with self._conn() as conn:
            conn.execute(text("DELETE FROM flexorch_kv WHERE space = :s AND key = :k"), {"s": space, "k": key})

    def prune_keys(self, space: str, before: float) -> None:
        from sqlalchemy import text

        with self._conn() as conn:
            conn.execute(
                text("DELETE FROM flexorch_kv WHERE space = :s AND updated_at < :b"), {"s": space, "b": before}
            )

    # --- records -----------------------------------------------------------------------------
    def append(self, space: str, record: dict[str, Any]) -> None:
        from sqlalchemy import text

        with self._conn() as conn:
            conn.execute(
                text("INSERT INTO flexorch_records (space, at, record) VALUES (:s, :a, :r)"),
                {"s": space, "a": float(record.get("at", time.time())), "r": json.dumps(record, sort_keys=True)},
            )

    def records(self, space: str) -> list[dict[str, Any]]:
        from sqlalchemy import text

        with self._conn() as conn:
            rows = conn.execute(
                text("SELECT record FROM flexorch_records WHERE space = :s ORDER BY id"), {"s": space}
            ).all()
        return [json.loads(r[0]) for r in rows]

    def prune(self, space: str, before: float) -> None:
        from sqlalchemy import text

        with self._conn() as conn:
            conn.execute(text("DELETE FROM flexorch_records WHERE space = :s AND at < :b"), {"s": space, "b": before})
