"""The flexorch store on both of its forms, the folder and a real PostgreSQL (a private server, as
the e2e stacks run): the same contract, locks that hold across processes (the Airflow machines'
stand-in), a budget charged exactly once by checks racing on several "machines", a service's
decision not written over, and the refusal of a one-machine store under a distributed executor."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from flexorch_provider import store as flexstore
from flexorch_provider.exceptions import ConfigurationError
from flexorch_provider.store.files import FileStore
from flexorch_provider.store.sql import SqlStore


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    from flexorch_provider.dev.stack_db import Postgres, why_not_postgres

    problem = why_not_postgres()
    assert problem is None, f"the store tests need the PostgreSQL that scripts/system-deps.sh installs: {problem}"
    server = Postgres(tmp_path_factory.mktemp("store-pg"))
    server.start()
    try:
        yield server
    finally:
        server.remove()


def _sql(postgres) -> SqlStore:
    from sqlalchemy import text

    url = postgres.airflow_env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    store = SqlStore(url, "the test database")
    store._setup()
    with store.engine.begin() as conn:  # each test starts empty
        conn.execute(text("DELETE FROM flexorch_kv"))
        conn.execute(text("DELETE FROM flexorch_records"))
    return store


@pytest.fixture(params=["files", "postgres"])
def make_store(request, tmp_path):
    """A factory: each call is a new store object on the same place (as another machine would open it)."""
    if request.param == "files":
        return lambda: FileStore(tmp_path / "state", shared=True)
    pg = request.getfixturevalue("postgres")
    _sql(pg)
    url = pg.airflow_env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    return lambda: SqlStore(url, "the test database")


def test_keys_records_and_pruning_follow_one_contract(make_store):
    store, other = make_store(), make_store()
    assert store.get("services", "web") is None
    store.put("services", "web", {"deployed": True, "slots": [0, 1]})
    store.put("services", "web", {"deployed": False, "slots": None})  # replaced whole
    assert other.get("services", "web") == {"deployed": False, "slots": None}  # another machine sees it
    other.delete("services", "web")
    assert store.get("services", "web") is None
    store.put("log-cursors", "a" * 32, {"cursor": 7})
    store.prune_keys("log-cursors", time.time() - 60)  # written just now: kept
    assert other.get("log-cursors", "a" * 32) == {"cursor": 7}
    store.prune_keys("log-cursors", time.time() + 60)
    assert other.get("log-cursors", "a" * 32) is None
    now = time.time()
    for i in range(3):
        store.append("usage", {"t": "start", "n": i, "at": now - 10 + i})
    assert [r["n"] for r in other.records("usage")] == [0, 1, 2]  # in the order written
    assert other.records("elsewhere") == []


def _charge(factory_args: tuple[str, str], results, tries: int) -> None:
    """One "machine": a check that reads what is used and charges one unit, under the ledger's lock,
    refused once 10 are used."""
    kind, where = factory_args
    store = FileStore(Path(where), shared=True) if kind == "files" else SqlStore(where, "test")
    for _ in range(tries):
        with store.locked("usage"):
            used = len([r for r in store.records("usage") if r.get("t") == "charge"])
            if used >= 10:
                results.put("refused")
                continue
            time.sleep(0.005)  # widen the window between the read and the write
            store.append("usage", {"t": "charge", "at": time.time()})
            results.put("charged")


def test_checks_racing_on_several_machines_charge_the_budget_exactly_once(make_store, request, tmp_path):
    store = make_store()
    kind = "files" if isinstance(store, FileStore) else "sql"
    where = str(tmp_path / "state") if kind == "files" else store.engine.url.render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_charge, args=((kind, where), results, 8)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    outcomes = [results.get(timeout=10) for _ in range(24)]
    assert outcomes.count("charged") == 10 and outcomes.count("refused") == 14
    assert len([r for r in store.records("usage") if r["t"] == "charge"]) == 10


def test_an_undeploy_during_a_watchers_converge_is_not_written_over(make_store, monkeypatch):
    """The watcher holds the service's lock while it converges; an undeploy waits, then wins: the
    state says undeployed afterwards, whatever the watcher read before."""
    import threading

    from flexorch_provider.services import state as service_state

    store = make_store()
    monkeypatch.setattr(service_state, "get_store", lambda: store)
    with service_state.changing("web") as s:
        s.mark(True, [0], "ssh")
    inside, order = threading.Event(), []

    def watcher() -> None:
        with service_state.changing("web") as s:
            inside.set()
            time.sleep(0.5)  # restoring a replica over ssh
            s.note({"restored": [0]})
            order.append("watcher")

    def undeploy() -> None:
        inside.wait(5)
        with service_state.changing("web") as s:
            s.mark(False, None, None)
            order.append("undeploy")

    threads = [threading.Thread(target=watcher), threading.Thread(target=undeploy)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order == ["watcher", "undeploy"]
    final = service_state.ServiceState.load("web")
    assert final.deployed is False and final.history[-1]["restored"] == [0]


def test_a_one_machine_store_is_refused_under_a_distributed_executor(tmp_path, monkeypatch, postgres):
    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv(flexstore.STORE_CONN_ENV, raising=False)
    monkeypatch.delenv(flexstore.SHARED_ENV, raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    flexstore.forget()
    with pytest.raises(ConfigurationError, match=r"on several machines: set FLEXORCH_STORE_CONN to an Airflow conn"):
        flexstore.get_store()
    monkeypatch.setenv(flexstore.SHARED_ENV, "1")  # the platform says the folder is on shared storage
    flexstore.forget()
    assert isinstance(flexstore.get_store(), FileStore)

    socket = postgres.airflow_env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("host=")[1]
    monkeypatch.setenv("AIRFLOW_CONN_FLEX_STORE", json.dumps({"conn_type": "postgres", "host": socket,
                                                              "login": "airflow", "schema": "airflow"}))  # fmt: skip
    monkeypatch.setenv(flexstore.STORE_CONN_ENV, "flex_store")
    flexstore.forget()
    shared = flexstore.get_store()
    assert isinstance(shared, SqlStore) and shared.describe() == "the database of connection flex_store"
    shared.put("services", "probe", {"ok": 1})
    assert shared.get("services", "probe") == {"ok": 1}
    monkeypatch.setenv("AIRFLOW_CONN_FLEX_STORE", json.dumps({"conn_type": "ssh", "host": "x"}))
    flexstore.forget()
    with pytest.raises(ConfigurationError, match="is of type 'ssh': it must be postgres"):
        flexstore.get_store()
    flexstore.forget()
