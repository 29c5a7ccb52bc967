"""Which database the embedded stack runs on, and what it says when it cannot have the one asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexorch_provider.dev import stack_db
from flexorch_provider.exceptions import ConfigurationError


def test_sqlite_on_request_with_the_lock_wait(tmp_path):
    db = stack_db.choose(tmp_path, "sqlite")
    assert db.kind == "sqlite" and db.server is None
    assert db.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'airflow.db'}"
    assert db.fallback_reason is None


def test_an_unknown_kind_names_the_choices(tmp_path):
    with pytest.raises(ConfigurationError, match="use one of auto, postgres, sqlite"):
        stack_db.choose(tmp_path, "mysql")


def test_env_chooses_when_no_argument(tmp_path, monkeypatch):
    monkeypatch.setenv(stack_db.DB_ENV, "SQLite")
    assert stack_db.choose(tmp_path).kind == "sqlite"


def test_without_a_server_postgres_is_refused_and_auto_falls_back_saying_why(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_db, "postgres_bindir", lambda: None)
    with pytest.raises(ConfigurationError, match=r"apt-get install postgresql.*or choose sqlite"):
        stack_db.choose(tmp_path, "postgres")
    db = stack_db.choose(tmp_path, "auto")
    assert db.kind == "sqlite"
    assert "no PostgreSQL server is installed" in db.describe()


def test_without_drivers_the_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_db, "postgres_bindir", lambda: Path("/usr/lib/postgresql/15/bin"))
    monkeypatch.setattr(stack_db, "_drivers_missing", lambda: ["asyncpg"])
    assert "flexorch-provider[postgres]" in (stack_db.why_not_postgres() or "")


def test_the_newest_debian_server_is_taken(tmp_path, monkeypatch):
    for major in ("9", "15", "13"):
        (tmp_path / major / "bin").mkdir(parents=True)
        (tmp_path / major / "bin" / "initdb").touch()
    real_glob = Path.glob
    monkeypatch.setattr(
        Path,
        "glob",
        lambda self, pattern: (
            real_glob(tmp_path, pattern) if str(self) == "/usr/lib/postgresql" else real_glob(self, pattern)
        ),
    )
    assert stack_db.postgres_bindir() == tmp_path / "15" / "bin"


def test_a_private_server_starts_answers_on_its_socket_only_and_is_removed(tmp_path):
    """A real server (scripts/system-deps.sh installs Debian's postgresql): no TCP listener, a 0700 socket folder, the airflow database, gone after remove()."""
    import psycopg2

    server = stack_db.Postgres(tmp_path / "home")
    server.start()
    try:
        assert (server.socket_dir.stat().st_mode & 0o777) == 0o700
        with psycopg2.connect(host=str(server.socket_dir), user="airflow", dbname="airflow") as conn:
            with conn.cursor() as cur:
                cur.execute("SHOW listen_addresses")
                assert cur.fetchone() == ("",)
        assert (tmp_path / "home" / "postgres.location").read_text().strip() == str(server.data)
    finally:
        server.remove()
    assert not server.data.exists()
    assert (tmp_path / "home" / "postgres.log").exists()


def test_the_stacks_env_file_gives_the_cli_its_api_url(tmp_path):
    """`. .demo/airflow.env && flexorch status` used to say "no Airflow API URL"."""
    import subprocess

    from flexorch_provider.dev.stack import AirflowStack

    stack = AirflowStack(tmp_path / "home", tmp_path / "dags", db="sqlite", port=18765)
    stack.home.mkdir(parents=True)
    stack._write_env_file()
    env = tmp_path / "home" / "airflow.env"
    shown = subprocess.run(["bash", "-c", f". {env} && echo $FLEXORCH_API_URL"], capture_output=True, text=True)
    assert shown.stdout.strip() == stack.url and stack.url.startswith("http://127.0.0.1:")
