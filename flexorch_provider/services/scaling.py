"""Autoscaling a service: the decision (target-value math with separate up and down delays) and
which replica slots go or come (:func:`scaled_slots`).

``desired = ceil(metric / target)`` (the same as ``current × (metric per replica) / target``),
clamped to ``min``..``max``. A step up waits ``up_delay`` after the last change; a step down
needs every reading for ``down_delay`` to have asked for fewer replicas (it goes to the most any
of them asked for) and ``down_delay`` since the last change, so a burst followed by a lull does
not flap. A metric that cannot be read never scales down: the count stays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from flexorch_provider.spec.autoscale import Autoscale


@dataclass
class ScaleState:
    """What the decision remembers between readings (kept in the watcher's state)."""

    last_change: float | None = None
    lower_since: float | None = None  # since when every reading asked for fewer replicas
    lower_max: int = 0  # the most replicas those readings asked for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ScaleState:
        data = data or {}
        return cls(data.get("last_change"), data.get("lower_since"), int(data.get("lower_max") or 0))


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    value: float | None
    why: str

    @property
    def changes(self) -> bool:
        return self.desired != self.current

    def line(self) -> str:
        metric = "unreadable" if self.value is None else f"{self.value:g}"
        return f"autoscale: metric {metric}, replicas {self.current} → {self.desired}: {self.why}"


def wanted(cfg: Autoscale, value: float) -> int:
    raw = math.ceil(value / cfg.target - 1e-9) if value > 0 else 0
    return max(cfg.min, min(cfg.max, raw))


def decide(cfg: Autoscale, current: int, value: float | None, now: float, state: ScaleState) -> Decision:
    """The count for now (``state`` is updated in place)."""
    up_s, down_s = cfg.up_delay.total_seconds(), cfg.down_delay.total_seconds()
    since_change = math.inf if state.last_change is None else now - state.last_change
    if current < cfg.min or current > cfg.max:  # the spec's range changed: back inside it at once
        desired = max(cfg.min, min(cfg.max, current))
        state.last_change, state.lower_since = now, None
        return Decision(current, desired, value, f"outside min {cfg.min}..max {cfg.max}")
    if value is None:
        state.lower_since = None
        return Decision(current, current, None, "the metric cannot be read: keeping the count (never scale down blind)")
    want = wanted(cfg, value)
    per = f"{value:g} / target {cfg.target:g} per replica → {want}"
    if want >= current:
        state.lower_since = None
    if want > current:
        if since_change < up_s:
            return Decision(current, current, value, f"{per}; next step up in {up_s - since_change:.0f}s (up_delay)")
        state.last_change = now
        return Decision(current, want, value, f"{per}: scaling up")
    if want == current:
        return Decision(current, current, value, f"{per}: at target")
    if state.lower_since is None:
        state.lower_since, state.lower_max = now, want
    state.lower_max = max(state.lower_max, want)
    lower_for = now - state.lower_since
    if lower_for < down_s or since_change < down_s:
        wait = max(down_s - lower_for, down_s - since_change)
        return Decision(current, current, value, f"{per}; scaling down in {wait:.0f}s if it stays lower (down_delay)")
    desired = state.lower_max
    state.last_change, state.lower_since = now, None
    return Decision(current, desired, value, f"{per}: lower for {lower_for:.0f}s, scaling down")


def prometheus_value(conn_id: str, query: str, timeout: float = 5.0) -> float:
    """One number from a Prometheus instant query (the sum of the result's samples); the server's
    URL is the Airflow connection's host (with schema and port)."""
    import json
    import urllib.parse
    import urllib.request

    from airflow.sdk import BaseHook

    from flexorch_provider.exceptions import ConfigurationError
    from flexorch_provider.runner.metrics import MetricError, _number

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as e:
        raise ConfigurationError(
            f"autoscale.metric.connection: the Airflow connection {conn_id!r} could not be read ({type(e).__name__}); "
            f"create it: airflow connections add {conn_id} --conn-type http --conn-host http://prometheus:9090"
        ) from None
    host = str(conn.host or "")
    base = host if "://" in host else f"{conn.schema or 'http'}://{host}"
    if conn.port:
        base = f"{base.rstrip('/')}:{conn.port}"
    url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.loads(resp.read(1 << 20))
    except Exception as e:
        raise MetricError(f"the Prometheus query failed: {getattr(e, 'reason', e)}") from None
    result = (data.get("data") or {}).get("result") if isinstance(data, dict) else None
    if data.get("status") != "success" or not isinstance(result, list):
        raise MetricError(f"Prometheus answered {str(data.get('error') or data)[:200]}")
    if not result:
        raise MetricError("the Prometheus query returned no samples")
    return sum(_number(sample["value"][1], "a Prometheus sample") for sample in result)


def scaled_slots(slots: list[int], desired: int, loads: dict[int, float]) -> list[int]:
    """The replica slots after a step to ``desired``: up adds the lowest free numbers; down drops the
    replicas with the least load first (a replica whose load is unknown counts as busy)."""
    slots = sorted(slots)
    if desired > len(slots):
        free = (n for n in range(desired + len(slots)) if n not in slots)
        return sorted([*slots, *(next(free) for _ in range(desired - len(slots)))])
    keep = sorted(slots, key=lambda s: (loads.get(s, float("inf")), s), reverse=True)[:desired]
    return sorted(keep)
