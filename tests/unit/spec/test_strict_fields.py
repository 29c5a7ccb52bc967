"""Fields that took what they should refuse (a number written as text, a boolean, infinity, a
0s period or timeout) are refused with the field and what to write instead."""

from __future__ import annotations

import pytest

from flexorch_provider.exceptions import SpecError
from flexorch_provider.spec import load_spec_text

SERVICE = "name: s\nkind: service\nrun: x\nport: 8000\n"
AUTOSCALE = "autoscale: {{max: 3, metric: {{source: http, path: /m}}, target: {target}, interval: {interval}}}\n"


def _refusal(text: str) -> str:
    with pytest.raises(SpecError) as e:
        load_spec_text(text)
    return "\n".join(str(p) for p in e.value.problems)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (SERVICE + AUTOSCALE.format(target='"8"', interval="15s"), "autoscale.target: Input should be a valid number"),
        (SERVICE + AUTOSCALE.format(target="true", interval="15s"), "autoscale.target: Input should be a valid number"),
        (
            SERVICE + AUTOSCALE.format(target=".inf", interval="15s"),
            "autoscale.target: Input should be a finite number",
        ),
        (SERVICE + AUTOSCALE.format(target="8", interval="0s"), "autoscale.interval: must be at least 1s"),
        (SERVICE + "health: {http: /h, interval: 0s}\n", "health.interval: must be at least 1s"),
        ("name: j\nkind: batch\nrun: x\ntimeout: 0\n", "timeout: must be at least 1s; 0 is not 'no limit'"),
    ],
)
def test_a_loose_value_is_refused_naming_the_field(text, says):
    assert says in _refusal(text)


def test_the_honest_values_still_pass():
    assert load_spec_text(SERVICE + AUTOSCALE.format(target="8", interval="15s")).autoscale.target == 8.0
    assert load_spec_text(SERVICE + AUTOSCALE.format(target="0.5", interval="1s")).autoscale.target == 0.5
    assert load_spec_text("name: j\nkind: batch\nrun: x\ntimeout: 1s\n").timeout.total_seconds() == 1


def test_a_budget_written_as_text_is_refused(tmp_path):
    from flexorch_provider.policy import load_policy

    path = tmp_path / "flexorch_policy.yaml"
    path.write_text('teams:\n  nlp: {members: [a], gpu_hours: {limit: "5"}}\n')
    with pytest.raises(SpecError, match=r"gpu_hours\.limit"):
        load_policy(path)
