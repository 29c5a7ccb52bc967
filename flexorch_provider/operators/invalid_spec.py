"""The single task of the placeholder DAG that stands in for an invalid spec."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from flexorch_provider.exceptions import SpecError


class InvalidSpecOperator(BaseOperator):
    """Fails with the spec's problems, so a run of a broken spec says exactly what to fix."""

    ui_color = "#f8d7da"

    def __init__(self, *, problems: str, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.problems = problems

    def execute(self, context: Any) -> None:
        raise SpecError(f"the spec for this DAG does not validate; fix it and the DAG comes back:\n{self.problems}")
