"""A service's state as flexorch keeps it: the one place that says whether it is deployed, where
it landed, and which replica slots it has.

Deploy and undeploy write it (:mod:`~flexorch_provider.services.actions`); the watcher reads it
and records each change it makes (restarts per slot, so a replica that crashes in a loop is
restarted at growing intervals, and the last decisions); the operator reads the current slots
from it (:meth:`ServiceState.current_slots`).

It is one key per service in the flexorch store (:func:`flexorch_provider.store.get_store`, the
same on every Airflow machine when shared; the default store's file is
``$FLEXORCH_STATE_DIR/services/<slug>.json``), and the autoscale window beside it
(``<slug>.scale``, written by the watcher's trigger only). A change of what a deploy or undeploy
decided is made under the service's lock (:func:`changing`), so deploy, reconcile and the
watcher, on any machine, never write over each other's decision.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flexorch_provider.backends.services.state import service_slug
from flexorch_provider.store import get_store

HISTORY = 50
BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 300.0
RESTART_WINDOW_S = 600.0  # restarts older than this no longer count for the back-off


SPACE = "services"


def initial_slots(w: Any) -> list[int]:
    """The replica slots of a service just deployed: its ``replicas`` (within autoscale's range)."""
    a = w.autoscale
    return list(range(max(a.min, min(a.max, w.replicas)))) if a else list(range(w.replicas))


@dataclass
class ServiceState:
    name: str
    deployed: bool = False
    slots: list[int] | None = None  # autoscaled: the replicas' slot numbers
    target: str | None = None  # the target its deploy landed on (the first of its list that accepted it)
    restarts: dict[str, list[float]] = field(default_factory=dict)  # slot → when it was restarted
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, name: str) -> ServiceState:
        data = get_store().get(SPACE, service_slug(name))
        if not isinstance(data, dict):
            return cls(name)
        target = data.get("target")
        return cls(
            name,
            bool(data.get("deployed")),
            data.get("slots"),
            target if isinstance(target, str) else None,
            {str(k): list(v) for k, v in (data.get("restarts") or {}).items()},
            list(data.get("history") or []),
        )

    def save(self) -> None:
        data = {
            "name": self.name,
            "deployed": self.deployed,
            "slots": self.slots,
            "target": self.target,
            "restarts": self.restarts,
            "history": self.history[-HISTORY:],
        }
        get_store().put(SPACE, service_slug(self.name), data)

    @classmethod
    def load_scale(cls, name: str) -> dict[str, Any]:
        """The autoscale window, kept apart: the trigger writes it, and only it (no lost updates of
        what the tasks write, ``deployed`` above all)."""
        data = get_store().get(SPACE, f"{service_slug(name)}.scale")
        return dict(data) if isinstance(data, dict) else {}

    @classmethod
    def save_scale(cls, name: str, scale: dict[str, Any]) -> None:
        get_store().put(SPACE, f"{service_slug(name)}.scale", scale)

    def current_slots(self, w: Any) -> list[int]:
        """The replica slots service ``w`` runs now: the autoscaled ones recorded here, else those of
        its spec (:func:`initial_slots`)."""
        return list(self.slots) if (w.autoscale and self.slots is not None) else initial_slots(w)

    def landed_on(self, w: Any) -> str:
        """The target the service runs on: where its deploy landed, else the first of its list."""
        return self.target if self.target is not None and self.target in w.target else str(w.target[0])

    def mark(self, deployed: bool, slots: list[int] | None, target: str | None) -> None:
        """What a deploy (or undeploy) decided; the watcher restores and scales from it."""
        self.deployed = deployed
        self.slots = slots if deployed else None
        self.target = target if deployed else self.target

    def note(self, entry: dict[str, Any]) -> None:
        self.history = [*self.history, {"at": time.time(), **entry}][-HISTORY:]

    def restarted(self, slot: int, now: float) -> None:
        recent = [t for t in self.restarts.get(str(slot), []) if now - t < RESTART_WINDOW_S]
        self.restarts[str(slot)] = [*recent, now]

    def next_restart(self, slot: int, now: float) -> tuple[float, int]:
        """(when slot may be restarted again, how many restarts it had lately): a replica that died
        is restarted at once; one that dies again waits 5 s after its last restart, then 10 s, 20 s...
        up to 5 min while it keeps dying (ten quiet minutes forgive it)."""
        recent = [t for t in self.restarts.get(str(slot), []) if now - t < RESTART_WINDOW_S]
        if not recent:
            return now, 0
        return recent[-1] + min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (len(recent) - 1)), len(recent)


@contextmanager
def changing(name: str) -> Iterator[ServiceState]:
    """The service's state, read and written back under its lock (on every machine with a shared
    store): one decision at a time. Written back even when the body fails: what it recorded
    before failing (a restart, a history entry) stands."""
    store = get_store()
    with store.locked(f"service-{service_slug(name)}"):
        state = ServiceState.load(name)
        try:
            yield state
        finally:
            state.save()
