"""The service watcher's eyes and hands: what must change now, and how a change is applied.

A service's watcher (the ``<name>-watch`` DAG: one deferrable task, its trigger follows the
replicas from the triggerer) fires only when something must change: a replica that is not
running, one unhealthy past its grace, a host that went away with its replica, or an autoscale
decision. The task then converges once, records what it did in the service's state, and ends; the
DAG is ``@continuous``, so the next watcher starts at once.

::

    event, seen = look(spec, target, now)          # the trigger, each interval: None while all is well
    change = Change.of(service, state, event, now)  # the task: the slots to converge to, restarts noted
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flexorch_provider import capabilities
from flexorch_provider.fanout import reason
from flexorch_provider.services.state import ServiceState


def service_job(spec: dict[str, Any], slots: list[int] | None) -> Any:
    """The service of ``spec`` resolved for a reconcile of ``slots`` (the watcher's own view)."""
    from flexorch_provider.backends.base import ResolvedJob
    from flexorch_provider.resolve import load_workload

    w = load_workload(spec)
    job = ResolvedJob.for_run(w, f"service/{w.name}", action="reconcile")
    job.slots = slots
    return job


def look(spec: dict[str, Any], target: str | None, now: float) -> tuple[dict[str, Any] | None, str]:
    """(an event for the watcher task, or None; one line on what was seen). ``target``: where the
    service runs (None: where its state says it landed)."""
    from flexorch_provider.backends.registry import get_backend
    from flexorch_provider.services.scaling import ScaleState, decide

    job = service_job(spec, None)
    w = job.service
    state = ServiceState.load(w.name)
    if not state.deployed:
        return None, f"service {w.name} is not deployed: nothing to keep"
    target = target or state.landed_on(w)
    slots = state.current_slots(w)
    job.slots = slots
    a = w.autoscale
    metric = a.metric.model_dump(mode="json") if a and a.metric.source != "prometheus" else None
    status = get_backend(target).service_status(job, metric)
    grace = w.health.grace.total_seconds() if w.health else 5.0
    wrong = {} if capabilities.of(target).self_healing else problems(status, slots, grace)
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
        scale = ScaleState.from_dict(ServiceState.load_scale(w.name))
        d = decide(a, len(slots), value, now, scale)
        line = d.line() + (f" ({error})" if error else "")
        ServiceState.save_scale(w.name, scale.to_dict())  # the window of lower readings, the last change
        if d.changes:
            event["scale"] = {
                "current": d.current,
                "desired": d.desired,
                "value": value,
                "why": line,
                "loads": _loads(status),
            }
        waiting.append(line.split(";")[0])
    seen = f"{status.get('healthy')}/{len(slots)} healthy" + ("; " + "; ".join(waiting) if waiting else "")
    return (event or None), seen


@dataclass
class Change:
    """What one watcher event asks for: the replicas to restore (slot → why), an autoscale step,
    and the slots the service converges to."""

    slots: list[int]
    restore: dict[int, str] = field(default_factory=dict)
    scale: dict[str, Any] | None = None

    @classmethod
    def of(cls, w: Any, state: ServiceState, event: dict[str, Any], now: float) -> Change:
        """The change ``event`` asks of service ``w``; the restarts and new slots are noted in ``state``."""
        from flexorch_provider.services.scaling import scaled_slots

        slots = state.current_slots(w)
        restore = {int(k): str(v) for k, v in (event.get("restore") or {}).items()}
        for slot in sorted(restore):
            if slot in slots:
                state.restarted(slot, now)
        scale = event.get("scale") or None
        if scale:
            loads = {int(k): float(v) for k, v in (scale.get("loads") or {}).items()}
            slots = scaled_slots(slots, int(scale["desired"]), loads)
            state.slots = slots
        return cls(slots, restore, scale)

    def lines(self) -> list[str]:
        """For the task log: each replica restored, the autoscale decision."""
        out = [f"restore: replica {slot} {why}" for slot, why in sorted(self.restore.items())]
        return out + ([str(self.scale["why"])] if self.scale else [])

    def history_entry(self) -> dict[str, Any]:
        scale = {k: self.scale[k] for k in ("current", "desired", "value")} if self.scale else None
        return {"restore": {str(k): v for k, v in self.restore.items()}, "scale": scale}


def problems(status: dict[str, Any], slots: list[int], grace_s: float) -> dict[int, str]:
    """slot → what is wrong with it (not running, unhealthy past its grace, its host unreachable)."""
    by_slot: dict[int, list[dict[str, Any]]] = {}
    for r in status.get("replicas", []):
        by_slot.setdefault(int(r["slot"]), []).append(r)
    out: dict[int, str] = {}
    gone = "; ".join(f"{h} unreachable: {why}" for h, why in (status.get("unreachable") or {}).items())
    for slot in slots:
        rows = by_slot.get(slot, [])
        if not rows:
            out[slot] = "not running" + (f" ({gone})" if gone else "")
        elif not any(r.get("healthy") for r in rows) and all(float(r.get("age_s") or 0) > grace_s for r in rows):
            out[slot] = f"unhealthy past its {grace_s:.0f}s grace: {rows[0].get('detail')}"
        elif twice := _twice(rows):
            out[slot] = f"running twice, on {twice}: a host that came back still ran the copy moved away from it"
    for slot in sorted(by_slot):
        if slot not in slots:
            out[slot] = "not wanted any more"
    return out


def _twice(rows: list[dict[str, Any]]) -> str | None:
    """The hosts one slot runs on at the same revision, when more than one (not a rolling update,
    whose copies differ in revision)."""
    hosts: dict[str, set[str]] = {}
    for r in rows:
        hosts.setdefault(str(r.get("revision")), set()).add(str(r.get("host")))
    doubled = next((sorted(h) for h in hosts.values() if len(h) > 1), None)
    return " and ".join(doubled) if doubled else None


def _loads(status: dict[str, Any]) -> dict[str, float]:
    return {
        str(r["slot"]): float(r["load"]["value"])
        for r in status.get("replicas", [])
        if isinstance(r.get("load"), dict) and "value" in r["load"]
    }


def _metric_value(a: Any, status: dict[str, Any]) -> tuple[float | None, str | None]:
    """The service's load (summed over its replicas), or None with why it cannot be read."""
    if a.metric.source == "prometheus":
        from flexorch_provider.services.scaling import prometheus_value

        try:
            return prometheus_value(a.metric.connection, a.metric.query), None
        except Exception as e:
            return None, reason(e)
    rows = [r for r in status.get("replicas", []) if r.get("healthy")]
    errors = [f"replica {r['slot']}: {r['load'].get('error')}" for r in rows if "error" in (r.get("load") or {})]
    if errors or not rows:
        return None, "; ".join(errors) or "no healthy replica to read the metric on"
    return sum(float(r["load"]["value"]) for r in rows), None
