"""The service watcher's memory and its eyes.

A service's watcher (the ``<name>-watch`` DAG: one deferrable task, its trigger follows the
replicas from the triggerer) fires only when something must change: a replica that is not
running, one unhealthy past its grace, a host that went away with its replica, or an autoscale
decision. The task then converges once, records what it did here, and ends; the DAG is
``@continuous``, so the next watcher starts at once.

The memory is one JSON file per service, ``$FLEXORCH_STATE_DIR/services/<slug>.json`` (the folder
the policy ledger uses; with several Airflow machines it must be shared): whether the service is
deployed, its replica slots when autoscaled, the autoscale state, recent restarts per slot (a
replica that crashes in a loop is restarted at growing intervals), and the last decisions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexorch_provider.backends.services.state import service_slug
from flexorch_provider.paths import state_dir

HISTORY = 50
BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 300.0
RESTART_WINDOW_S = 600.0  # restarts older than this no longer count for the back-off


def services_dir() -> Path:
    return state_dir() / "services"


@dataclass
class WatchState:
    name: str
    deployed: bool = False
    slots: list[int] | None = None  # autoscaled: the replicas' slot numbers
    restarts: dict[str, list[float]] = field(default_factory=dict)  # slot → when it was restarted
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def path_for(cls, name: str) -> Path:
        return services_dir() / f"{service_slug(name)}.json"

    @classmethod
    def load(cls, name: str) -> WatchState:
        try:
            data = json.loads(cls.path_for(name).read_text())
        except (OSError, ValueError):
            return cls(name)
        return cls(name, bool(data.get("deployed")), data.get("slots"),
                   {str(k): list(v) for k, v in (data.get("restarts") or {}).items()},
                   list(data.get("history") or []))  # fmt: skip

    def save(self) -> None:
        path = self.path_for(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"name": self.name, "deployed": self.deployed, "slots": self.slots,
                                   "restarts": self.restarts,
                                   "history": self.history[-HISTORY:]}))  # fmt: skip
        os.replace(tmp, path)

    @classmethod
    def load_scale(cls, name: str) -> dict[str, Any]:
        """The autoscale window, kept apart: the trigger writes it, and only it (no lost updates of
        what the tasks write, ``deployed`` above all)."""
        try:
            return dict(json.loads(cls.path_for(name).with_suffix(".scale.json").read_text()))
        except (OSError, ValueError):
            return {}

    @classmethod
    def save_scale(cls, name: str, scale: dict[str, Any]) -> None:
        path = cls.path_for(name).with_suffix(".scale.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(scale))
        os.replace(tmp, path)

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
    for slot in sorted(by_slot):
        if slot not in slots:
            out[slot] = "not wanted any more"
    return out
