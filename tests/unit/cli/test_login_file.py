"""The login file belongs to the server it was saved for: a saved password or token is never sent
to another --url (a typo, or a server someone else runs)."""

from __future__ import annotations

from flexorch_provider.client.api import Login
from flexorch_provider.client.config import resolve_login, save_token


def test_saved_credentials_go_to_their_own_server_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXORCH_CONFIG", str(tmp_path / "login.json"))
    for name in ("FLEXORCH_API_URL", "FLEXORCH_USER", "FLEXORCH_PASSWORD", "FLEXORCH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    save_token(Login(url="https://airflow.example/", user="alice", password="pw-123", token="tok"), True)
    own = resolve_login()
    assert (own.url, own.user, own.password, own.token) == ("https://airflow.example/", "alice", "pw-123", "tok")
    assert resolve_login(url="https://airflow.example").password == "pw-123"  # the same server
    other = resolve_login(url="https://evil.example")
    assert (other.user, other.password, other.token) == (None, None, None)
    assert resolve_login(url="https://evil.example", user="alice").password is None
