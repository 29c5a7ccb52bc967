"""The autoscale decision and the metric readers (plain, JSON, Prometheus text, a command)."""

from __future__ import annotations

import pytest

from flexorch_provider.exceptions import SpecError
from flexorch_provider.resolve import load_workload
from flexorch_provider.runner.metrics import MetricError, parse
from flexorch_provider.services.scaling import ScaleState, decide

METRIC = {"source": "http", "path": "/metrics", "format": "prometheus", "name": "inflight"}


def cfg(**extra):
    spec = {"name": "web", "kind": "service", "target": "ssh", "run": "x", "port": 8000,
            "autoscale": {"min": 1, "max": 4, "target": 10, "metric": METRIC, "up_delay": "30s", "down_delay": "60s",
                          **extra}}  # fmt: skip
    return load_workload(spec).autoscale


def test_target_value_math_clamped_to_min_and_max():
    c = cfg()
    assert decide(c, 1, 35.0, 0, ScaleState()).desired == 4  # ceil(35 / 10)
    assert decide(c, 1, 500.0, 0, ScaleState()).desired == 4  # max
    assert decide(c, 2, 20.0, 0, ScaleState()).desired == 2  # at target
    d = decide(c, 2, 20.0, 0, ScaleState())
    assert not d.changes and "at target" in d.line() and "replicas 2 → 2" in d.line()


def test_one_step_up_per_up_delay():
    c, s = cfg(), ScaleState()
    assert decide(c, 1, 25.0, 100, s).desired == 3
    held = decide(c, 3, 39.0, 110, s)
    assert held.desired == 3 and "next step up in 20s" in held.why
    assert decide(c, 3, 39.0, 131, s).desired == 4


def test_down_only_after_the_load_stayed_lower_for_down_delay_and_to_the_most_asked():
    c, s = cfg(), ScaleState(last_change=0)
    assert decide(c, 4, 5.0, 100, s).desired == 4  # lower since 100
    assert decide(c, 4, 21.0, 130, s).desired == 4  # still lower (3 < 4): it counts, asks for 3
    assert decide(c, 4, 5.0, 159, s).desired == 4
    down = decide(c, 4, 5.0, 161, s)
    assert down.desired == 3 and "scaling down" in down.why  # not 1: a reading in the window asked for 3
    # a burst resets the window: no flapping
    s = ScaleState(last_change=0)
    decide(c, 4, 5.0, 100, s)
    decide(c, 4, 45.0, 130, s)  # back to 4
    assert decide(c, 4, 5.0, 161, s).desired == 4


def test_an_unreadable_metric_never_scales_down():
    c, s = cfg(), ScaleState(last_change=0, lower_since=0, lower_max=1)
    d = decide(c, 3, None, 10_000, s)
    assert d.desired == 3 and "cannot be read" in d.why and "unreadable" in d.line()
    assert s.lower_since is None  # the lull must be seen again, after the metric is back


def test_a_count_outside_a_changed_range_moves_back_at_once():
    c = cfg(min=2, max=3)
    assert decide(c, 1, 0.0, 0, ScaleState()).desired == 2
    assert decide(c, 5, 100.0, 0, ScaleState()).desired == 3


def test_parse_number_json_and_prometheus():
    assert parse(" 7\n") == 7.0
    assert parse('{"data": {"inflight": 3}}', "json", "data.inflight") == 3.0
    assert parse('{"q": [1, {"n": 2.5}]}', "json", "q.1.n") == 2.5
    text = '# HELP inflight x\ninflight{route="/a"} 2\ninflight{route="/b"} 3\nother 9\n'
    assert parse(text, "prometheus", name="inflight") == 5.0
    assert parse(text, "prometheus", name="inflight", labels={"route": "/b"}) == 3.0
    for args, message in [(("nan",), "finite"), (("busy",), "not a number"), (('{"a": 1}', "json", "b"), "no 'b'"),
                          (('{"a": true}', "json", "a"), "true/false"), ((text, "prometheus", "missing"), "no sample")]:  # fmt: skip
        with pytest.raises(MetricError, match=message):
            parse(*args)


def test_spec_errors_say_what_to_fix():
    with pytest.raises(SpecError, match=r"min .3. is more than max .2."):
        cfg(min=3, max=2)
    with pytest.raises(SpecError, match="name: required with format prometheus"):
        cfg(metric={"source": "http", "path": "/m", "format": "prometheus"})
    with pytest.raises(SpecError, match="target"):
        cfg(target=0)
