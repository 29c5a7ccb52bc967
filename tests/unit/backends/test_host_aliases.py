"""A connection's ``host_aliases`` say how to reach the hosts a spec names."""

from __future__ import annotations

import json

import pytest

from flexorch_provider.backends.sshpool import Host, dial_address
from flexorch_provider.exceptions import ConfigurationError


@pytest.fixture
def conn(monkeypatch):
    def make(extra: dict) -> str:
        monkeypatch.setenv("AIRFLOW_CONN_ALIASED", json.dumps({"conn_type": "ssh", "login": "ops", "extra": extra}))
        return "aliased"

    return make


def test_an_alias_gives_address_port_and_login(conn):
    conn_id = conn({"host_aliases": {"gpu-box-1": "demo-h1@10.9.0.11:22", "gpu-box-2": "10.9.0.12"}})
    assert dial_address(conn_id, Host.parse("gpu-box-1")) == Host("10.9.0.11", 22, "demo-h1")
    # what the alias leaves out comes from the entry (here its port); the login then from the connection
    assert dial_address(conn_id, Host.parse("gpu-box-2:2222")) == Host("10.9.0.12", 2222, None)


def test_names_without_an_alias_and_the_connections_own_host_are_dialled_as_written(conn):
    conn_id = conn({"host_aliases": {"gpu-box-1": "10.9.0.11"}})
    assert dial_address(conn_id, Host.parse("me@other-box:23")) == Host("other-box", 23, "me")
    assert dial_address(conn_id, Host()) == Host()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"host_aliases": ["gpu-box-1"]}, "must map host names"),
        ({"host_aliases": {"gpu-box-1": "a b"}}, r"host_aliases\['gpu-box-1'\]: 'a b' is not a host entry"),
    ],
)
def test_a_bad_alias_says_which_connection_and_name(conn, extra, message):
    with pytest.raises(ConfigurationError, match=message):
        dial_address(conn(extra), Host.parse("gpu-box-1"))
