"""Where the CLI finds its server and login: flags, then the environment (``FLEXORCH_API_URL``,
``FLEXORCH_USER``, ``FLEXORCH_PASSWORD``, ``FLEXORCH_TOKEN``), then the file ``flexorch login``
writes (``$FLEXORCH_CONFIG``, default ``~/.config/flexorch/login.json``, mode 0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flexorch_provider.client.api import Login
from flexorch_provider.exceptions import ClientError


def config_path() -> Path:
    explicit = os.environ.get("FLEXORCH_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "flexorch" / "login.json"


def read_config() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ClientError(f"cannot read {path}: {e}; run `flexorch login` again") from None
    return data if isinstance(data, dict) else {}


def write_config(data: dict[str, Any]) -> Path:
    """Write the login file readable by this account only (created 0600, replaced atomically)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def resolve_login(url: str | None = None, user: str | None = None, password: str | None = None) -> Login:
    saved = read_config()
    env = os.environ
    url = url or env.get("FLEXORCH_API_URL") or saved.get("url")
    if not url:
        raise ClientError("no Airflow API URL: pass --url, set FLEXORCH_API_URL, or run `flexorch login --url URL`")
    # what the login file holds belongs to the server it was saved for: another --url gets none of it
    mine = saved if _same_server(saved.get("url"), url) else {}
    user = user or env.get("FLEXORCH_USER") or mine.get("user")
    password = password if password is not None else env.get("FLEXORCH_PASSWORD", mine.get("password"))
    token = env.get("FLEXORCH_TOKEN") or mine.get("token")
    return Login(url=url, user=user, password=password, token=token)


def _same_server(saved: Any, url: str) -> bool:
    return isinstance(saved, str) and saved.rstrip("/") == url.rstrip("/")


def save_token(login: Login, remember_password: bool) -> Path:
    data: dict[str, Any] = {"url": login.url, "user": login.user, "token": login.token}
    if remember_password and login.password is not None:
        data["password"] = login.password
    return write_config(data)
