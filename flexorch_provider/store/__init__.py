"""Where flexorch keeps what must outlive a process and be the same on every Airflow machine: the
policy ledger (who used what), each service's state (deployed or not, its slots, where it
landed, its watcher's history and autoscale window) and each trigger's log cursor.

Two stores with one small contract (:class:`Store`):

- :class:`~flexorch_provider.store.files.FileStore`, the default: files under
  ``$FLEXORCH_STATE_DIR`` (default ``$AIRFLOW_HOME/flexorch``). Right where every Airflow
  component runs on one machine, or where that folder is on storage they all mount (say so with
  ``FLEXORCH_STATE_SHARED=1``).
- :class:`~flexorch_provider.store.sql.SqlStore`: two tables in a PostgreSQL database that every
  machine reaches, named by an Airflow connection (``FLEXORCH_STORE_CONN=<conn id>``); locks are
  the database's, so a check and its charge are one step across all workers.

With a distributed executor (Celery, Kubernetes, Edge) and neither, :func:`get_store` refuses,
saying what to set: budgets, services and log cursors would otherwise differ per machine.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any, Protocol

from flexorch_provider.exceptions import ConfigurationError

STORE_CONN_ENV = "FLEXORCH_STORE_CONN"  # an Airflow connection to a PostgreSQL every machine reaches
SHARED_ENV = "FLEXORCH_STATE_SHARED"  # 1: $FLEXORCH_STATE_DIR is on storage every machine mounts
ONE_MACHINE_EXECUTORS = ("LocalExecutor", "SequentialExecutor", "DebugExecutor")


class Store(Protocol):
    """Keys with JSON values in named spaces, append-only records, and locks all machines honour."""

    shared: bool  # every Airflow machine sees the same store

    def get(self, space: str, key: str) -> Any | None: ...

    def put(self, space: str, key: str, value: Any) -> None: ...

    def delete(self, space: str, key: str) -> None: ...

    def prune_keys(self, space: str, before: float) -> None:
        """Drop keys of ``space`` last written before ``before`` (epoch seconds)."""

    def append(self, space: str, record: dict[str, Any]) -> None: ...

    def records(self, space: str) -> list[dict[str, Any]]: ...

    def prune(self, space: str, before: float) -> None:
        """Drop records of ``space`` older than ``before`` (epoch seconds, their ``at``)."""

    def locked(self, name: str) -> AbstractContextManager[None]:
        """Hold lock ``name`` (on every machine): what is read and written inside is one step."""

    def describe(self) -> str: ...


_STORES: dict[tuple[str, ...], Store] = {}


def get_store() -> Store:
    """The store this process uses (one per configuration, kept for the process)."""
    from flexorch_provider.paths import state_dir

    conn_id = os.environ.get(STORE_CONN_ENV, "").strip()
    key = ("sql", conn_id) if conn_id else ("files", str(state_dir()))
    store = _STORES.get(key)
    if store is None:
        if conn_id:
            from flexorch_provider.store.sql import SqlStore

            store = SqlStore.from_connection(conn_id)
        else:
            from flexorch_provider.store.files import FileStore

            store = FileStore(state_dir(), shared=_flag(SHARED_ENV))
            _refuse_unshared_with_a_distributed_executor(store)
        _STORES[key] = store
    return store


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def distributed_executors() -> list[str]:
    """The executors Airflow is configured with that run tasks on other machines."""
    try:
        from airflow.configuration import conf

        configured = conf.get("core", "executor", fallback="") or ""
    except Exception:
        return []
    names = [part.strip().split(":")[-1].rsplit(".", 1)[-1] for part in configured.split(",") if part.strip()]
    return [n for n in names if n not in ONE_MACHINE_EXECUTORS]


def _refuse_unshared_with_a_distributed_executor(store: Store) -> None:
    far = distributed_executors()
    if far and not store.shared:
        raise ConfigurationError(
            f"flexorch keeps its ledger, service states and log cursors in {store.describe()} on this machine's "
            f"disk, but Airflow runs tasks with {', '.join(far)}, on several machines: set {STORE_CONN_ENV} to an "
            f"Airflow connection to a PostgreSQL database every machine reaches, or {SHARED_ENV}=1 if that folder "
            "is on storage every machine mounts"
        )


def forget() -> None:
    """Drop the stores this process made (the next :func:`get_store` reads the configuration again)."""
    _STORES.clear()
