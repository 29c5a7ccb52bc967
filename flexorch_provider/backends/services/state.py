"""A service's state: the fleet it runs on, the replicas found there, and what the spec wants."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from flexorch_provider.backends.base import ResolvedJob, job_document, run_key_slug
from flexorch_provider.code import Bundle

H = TypeVar("H")
LIVE = ("pending", "running")


@dataclass
class Fleet(Generic[H]):
    """Where a service runs: hosts in spec order and one way to run the job runner on a host."""

    hosts: list[H]
    call: Callable[[H, Sequence[str], bytes | None], str]  # (host, runner args, stdin) → stdout
    label: Callable[[H], str]
    root: str  # the services directory on every host


@dataclass
class Replica(Generic[H]):
    host: H
    slot: int
    revision: str
    key_dir: str
    run_dir: str
    state: str
    age: float
    message: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE


@dataclass
class Desired:
    """The service as the spec wants it, for one run."""

    name: str
    directory: str
    replicas: int
    revision: str
    port: int | None
    grace_s: float
    interval_s: float
    strategy: str
    max_surge: int
    max_unavailable: int | None  # None: surge where a host has room, else one replica in place
    documents: dict[int, dict[str, Any]] = field(default_factory=dict)
    slots: list[int] = field(default_factory=list)  # the replicas' numbers (0..replicas-1 unless autoscaled)
    code: Bundle | None = field(default=None, repr=False)  # the service's code, sent to a host before a replica
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    registry: dict[str, str] | None = field(default=None, repr=False)  # a private image's login (not in the revision)


def service_slug(name: str) -> str:
    return run_key_slug(f"service/{name}")


def desired_state(job: ResolvedJob, root: str) -> Desired:
    """Slots, revision and each slot's job document (what the runner gets) from the spec."""
    w = job.service
    base = job_document(job)
    base["timeout"] = None  # a service runs until it is replaced or undeployed
    env = dict(base["env"])
    if w.port is not None:
        env.setdefault("PORT", str(w.port))
    health = None
    if w.health is not None:
        health = {
            "http": w.health.http,
            "port": w.port,
            "command": w.health.command,
            "timeout": w.health.timeout.total_seconds(),
        }
    fingerprint = {k: v for k, v in base.items() if k != "run_key"}
    fingerprint.update(
        env=env, health=health, secrets=hashlib.sha256(json.dumps(job.secrets, sort_keys=True).encode()).hexdigest()
    )
    revision = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:10]
    directory = f"{root}/{service_slug(job.name)}"
    slots = sorted(set(job.slots)) if job.slots is not None else list(range(w.replicas))
    documents = {}
    for slot in slots:
        documents[slot] = {
            **base,
            "run_key": f"service/{job.name}/{slot}",
            "env": {**env, "FLEXORCH_REPLICA": str(slot)},
            "service": {"name": job.name, "slot": slot, "revision": revision},
            "health": health,
        }
    return Desired(
        name=job.name,
        directory=directory,
        replicas=len(slots),
        revision=revision,
        port=w.port,
        slots=slots,
        grace_s=w.health.grace.total_seconds() if w.health else 5.0,
        interval_s=min(w.health.interval.total_seconds(), 0.5) if w.health else 0.5,
        strategy=w.update.strategy,
        max_surge=w.update.max_surge,
        max_unavailable=w.update.max_unavailable,
        code=job.code,
        documents=documents,
        secrets=dict(job.secrets),
        registry=job.registry,
    )
