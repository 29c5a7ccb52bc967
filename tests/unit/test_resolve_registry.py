"""A private image's login comes from an Airflow connection (host = registry, login, password),
read when the task runs; what is wrong with the connection is said before anything starts."""

from __future__ import annotations

import json

import pytest

from flexorch_provider.exceptions import ConfigurationError
from flexorch_provider.masking import REGISTRY_REF, secret_refs
from flexorch_provider.resolve import load_workload, resolve_registry
from flexorch_provider.spec.container import image_registry


def _workload(image="ghcr.io/acme/train:1.4", conn="ghcr_bot"):
    return load_workload({"name": "p", "kind": "batch", "run": "true", "image": image,
                          "container": {"registry_connection": conn}})  # fmt: skip


def _connection(monkeypatch, conn_id, **fields):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "generic", **fields}))


def test_the_login_is_read_from_the_connection(monkeypatch):
    _connection(monkeypatch, "ghcr_bot", host="ghcr.io", login="bot", password="tok-123")
    assert resolve_registry(_workload()) == {"registry": "ghcr.io", "login": "bot", "password": "tok-123"}
    _connection(monkeypatch, "lab", host="https://10.0.0.5", port=5000, login="u", password="p")
    w = _workload("10.0.0.5:5000/team/model:2", "lab")
    assert resolve_registry(w) == {"registry": "10.0.0.5:5000", "login": "u", "password": "p"}


def test_a_missing_or_incomplete_or_mismatched_connection_says_what_to_do(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    with pytest.raises(ConfigurationError, match=r"'nope' could not be read.*airflow connections add nope"):
        resolve_registry(_workload(conn="nope"))
    _connection(monkeypatch, "half", host="ghcr.io", login="bot")
    with pytest.raises(ConfigurationError, match=r"'half' has no password; it needs host"):
        resolve_registry(_workload(conn="half"))
    _connection(monkeypatch, "other", host="quay.io", login="bot", password="x")
    with pytest.raises(ConfigurationError, match=r"for registry 'quay.io', but image .* comes from 'ghcr.io'"):
        resolve_registry(_workload(conn="other"))


def test_no_image_or_no_connection_needs_no_login():
    assert resolve_registry(load_workload({"name": "p", "kind": "batch", "run": "true"})) is None
    w = load_workload({"name": "p", "kind": "batch", "run": "true", "image": "python:3.11"})
    assert resolve_registry(w) is None and REGISTRY_REF not in secret_refs(w)


def test_the_followers_mask_the_registry_password_too():
    assert secret_refs(_workload())[REGISTRY_REF] == {"source": "connection", "name": "ghcr_bot", "key": "password"}


@pytest.mark.parametrize(
    ("image", "registry"),
    [("python:3.11", "docker.io"), ("acme/train:1", "docker.io"), ("ghcr.io/acme/t:1", "ghcr.io"),
     ("localhost/x:1", "localhost"), ("10.0.0.1:5000/x", "10.0.0.1:5000"), ("localhost:5000/a/b@sha256:00", "localhost:5000")],
)  # fmt: skip
def test_the_registry_of_an_image_reference(image, registry):
    assert image_registry(image) == registry
