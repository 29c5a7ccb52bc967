"""The e2e tests use the same embedded stack as ``flexorch up``; theirs start from an empty database
and delete it when they stop."""

from pathlib import Path
from typing import Any

from flexorch_provider.dev import stack as dev_stack
from flexorch_provider.dev.stack import free_port


class AirflowStack(dev_stack.AirflowStack):
    def __init__(self, home: Path, dags: Path, extra_env: dict[str, str] | None = None, **kw: Any) -> None:
        kw.setdefault("scratch", True)
        super().__init__(home, dags, extra_env, **kw)


__all__ = ["AirflowStack", "free_port"]
