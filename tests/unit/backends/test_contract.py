"""The capability table (flexorch_provider.capabilities) against what each backend implements:
spec validation, the DAG factory and the watcher read the table, the backends do the work."""

from flexorch_provider import capabilities
from flexorch_provider.backends.base import Backend
from flexorch_provider.backends.registry import get_backend


def test_every_target_in_the_table_has_a_backend_and_the_table_matches_what_it_implements():
    for target in capabilities.TARGETS:
        backend = type(get_backend(target))
        caps = capabilities.of(target)
        assert backend.name == target
        assert (backend.service is not Backend.service) == caps.services, target
        assert (backend.service_status is not Backend.service_status) == caps.services, target
        assert (backend.gpu_pool is not Backend.gpu_pool) == caps.capacity, target
        assert get_backend(target).runs_services == caps.services


def test_spec_validation_keeps_services_off_targets_that_cannot_run_them():
    import pytest

    from flexorch_provider.exceptions import SpecError
    from flexorch_provider.resolve import load_workload

    assert capabilities.SERVICE_TARGETS == ("kubernetes", "ssh", "local")
    with pytest.raises(SpecError, match="slurm cannot run services"):
        load_workload({"name": "s", "kind": "service", "target": "slurm", "run": "serve", "port": 8000})
