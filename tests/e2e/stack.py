"""The e2e tests use the same embedded stack as ``flexorch up``; theirs start from an empty database
and delete it when they stop."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flexorch_provider.dev import stack as dev_stack
from flexorch_provider.dev.stack import free_port


class AirflowStack(dev_stack.AirflowStack):
    def __init__(self, home: Path, dags: Path, extra_env: dict[str, str] | None = None, **kw: Any) -> None:
        kw.setdefault("scratch", True)
        super().__init__(home, dags, extra_env, **kw)


FLEXORCH = str(Path(sys.executable).parent / "flexorch")


def password(stack: AirflowStack, user: str) -> str:
    return str(json.loads((stack.home / "simple_auth_manager_passwords.json.generated").read_text())[user])


def env_for(stack: AirflowStack, user: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLEXORCH"))}
    env.update(FLEXORCH_API_URL=stack.url, FLEXORCH_USER=user, FLEXORCH_PASSWORD=password(stack, user),
               FLEXORCH_CONFIG=str(stack.home / f"login-{user}.json"))  # fmt: skip
    env.update(extra)
    return env


def cli(
    stack: AirflowStack, user: str, *args: str, timeout: float = 180, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEXORCH, *args], env=env_for(stack, user, **extra), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


__all__ = ["FLEXORCH", "AirflowStack", "cli", "env_for", "free_port", "password"]
