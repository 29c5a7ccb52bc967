"""What every backend declares, checked against what spec validation assumes."""


def test_the_targets_that_validation_lets_run_services_are_those_whose_backend_runs_them():
    from flexorch_provider.backends.registry import get_backend
    from flexorch_provider.spec.models import SERVICE_TARGETS, TARGETS

    assert {t for t in TARGETS if get_backend(t).runs_services} == set(SERVICE_TARGETS)
