"""The e2e tests use the same embedded stack as ``flexorch up``."""

from flexorch_provider.devstack import AirflowStack, free_port

__all__ = ["AirflowStack", "free_port"]
