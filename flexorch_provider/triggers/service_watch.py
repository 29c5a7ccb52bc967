"""Follow a service's replicas from the triggerer (no worker slot) and fire only when something
must change: a replica not running or unhealthy past its grace (its back-off permitting), or an
autoscale step. See :mod:`flexorch_provider.backends.services.watch`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from flexorch_provider.fanout import reason


def service_job(spec: dict[str, Any], slots: list[int] | None) -> Any:
    from flexorch_provider.backends.base import ResolvedJob
    from flexorch_provider.resolve import load_workload

    w = load_workload(spec)
    job = ResolvedJob.for_run(w, f"service/{w.name}", action="reconcile")
    job.slots = slots
    return job


def initial_slots(w: Any) -> list[int]:
    a = w.autoscale
    return list(range(max(a.min, min(a.max, w.replicas)))) if a else list(range(w.replicas))


def look(spec: dict[str, Any], target: str, now: float) -> tuple[dict[str, Any] | None, str]:
    """(an event for the watcher task, or None; one line on what was seen)."""
    from flexorch_provider.backends.registry import get_backend
    from flexorch_provider.backends.services.scale import ScaleState, decide
    from flexorch_provider.backends.services.watch import WatchState, problems

    job = service_job(spec, None)
    w = job.service
    state = WatchState.load(w.name)
    if not state.deployed:
        return None, f"service {w.name} is not deployed: nothing to keep"
    slots = state.slots if (w.autoscale and state.slots is not None) else initial_slots(w)
    job.slots = slots
    a = w.autoscale
    metric = a.metric.model_dump(mode="json") if a and a.metric.source != "prometheus" else None
    status = get_backend(target).service_status(job, metric)
    grace = w.health.grace.total_seconds() if w.health else 5.0
    wrong = problems(status, slots, grace) if target != "kubernetes" else {}
    due, waiting = {}, []
    for slot, why in wrong.items():
        at, count = state.next_restart(slot, now)
        if at <= now or why == "not wanted any more":
            due[slot] = why + (f" (restarted {count} times in the last 10 min)" if count else "")
        else:
            waiting.append(f"replica {slot} {why}: restarted {count} times lately, next try in {at - now:.0f}s")
    event: dict[str, Any] = {}
    if due:
        event["restore"] = {str(k): v for k, v in due.items()}
    if a is not None:
        value, error = _metric_value(a, status)
        scale = ScaleState.from_dict(WatchState.load_scale(w.name))
        d = decide(a, len(slots), value, now, scale)
        line = d.line() + (f" ({error})" if error else "")
        WatchState.save_scale(w.name, scale.to_dict())  # the window of lower readings, the last change
        if d.changes:
            event["scale"] = {"current": d.current, "desired": d.desired, "value": value, "why": line,
                              "loads": _loads(status)}  # fmt: skip
        waiting.append(line.split(";")[0])
    seen = f"{status.get('healthy')}/{len(slots)} healthy" + ("; " + "; ".join(waiting) if waiting else "")
    return (event or None), seen


def _loads(status: dict[str, Any]) -> dict[str, float]:
    return {str(r["slot"]): float(r["load"]["value"]) for r in status.get("replicas", [])
            if isinstance(r.get("load"), dict) and "value" in r["load"]}  # fmt: skip


def _metric_value(a: Any, status: dict[str, Any]) -> tuple[float | None, str | None]:
    """The service's load (summed over its replicas), or None with why it cannot be read."""
    if a.metric.source == "prometheus":
        from flexorch_provider.backends.services.scale import prometheus_value

        try:
            return prometheus_value(a.metric.connection, a.metric.query), None
        except Exception as e:
            return None, reason(e)
    rows = [r for r in status.get("replicas", []) if r.get("healthy")]
    errors = [f"replica {r['slot']}: {r['load'].get('error')}" for r in rows if "error" in (r.get("load") or {})]
    if errors or not rows:
        return None, "; ".join(errors) or "no healthy replica to read the metric on"
    return sum(float(r["load"]["value"]) for r in rows), None


class ServiceWatchTrigger(BaseTrigger):
    """Fires ``{"restore": {slot: why}, "scale": {...}}`` when the service needs a change."""

    def __init__(
        self, spec: dict[str, Any], target: str, interval: float = 5.0, not_before: float | None = None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.target = target
        self.interval = float(interval)
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"spec": self.spec, "target": self.target, "interval": self.interval, "not_before": self.not_before},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        said = ""
        while True:
            try:
                event, seen = await asyncio.to_thread(look, self.spec, self.target, time.time())
            except Exception as e:  # a host or API briefly away: keep watching, say why once
                event, seen = None, f"cannot read the service now: {reason(e)}"
            if seen != said:
                self.log.info("%s", seen)
                said = seen
            if event is not None:
                wait = (self.not_before or 0) - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                yield TriggerEvent(event)
                return
            await asyncio.sleep(self.interval)
