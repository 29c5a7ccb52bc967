"""The e2e tests use the same embedded stack as ``flexorch up``; theirs start from an empty database
and delete it when they stop."""

from pathlib import Path
from typing import Any

from flexorch_provider import devstack
from flexorch_provider.devstack import free_port


class AirflowStack(devstack.AirflowStack):
    def __init__(self, home: Path, dags: Path, extra_env: dict[str, str] | None = None, **kw: Any) -> None:
        kw.setdefault("scratch", True)
        super().__init__(home, dags, extra_env, **kw)


__all__ = ["AirflowStack", "free_port"]
