"""How a job's target was chosen among its spec's targets (``target_policy``, ``max_pending``).

Plain records (no I/O): what each target had free (:class:`Seen`), the moves max_pending made, the
times a job kept its place, and the :class:`Choice` that holds them. The choice travels with the
job: to its trigger and back, and into the ``job`` XCom the flexorch page reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Seen:
    """What one target's inventory said about a job's GPU request. ``fits`` is None when not known."""

    target: str
    fits: bool | None
    free: int = 0  # GPUs of the requested type free on usable nodes
    total: int = 0  # GPUs of the requested type
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seen:
        fits = data.get("fits")
        return cls(
            str(data.get("target", "")),
            None if fits is None else bool(fits),
            int(data.get("free") or 0),
            int(data.get("total") or 0),
            str(data.get("detail") or ""),
        )

    @property
    def verdict(self) -> str:
        return "fits" if self.fits else "unknown" if self.fits is None else "full"

    @property
    def line(self) -> str:
        """One line for the task log: ``slurm full: 0 of 4 A100s free (A100 ×4); needs 2 per node on 1 node``."""
        return f"{self.target} {self.verdict}: {self.detail}"


@dataclass(frozen=True)
class Move:
    """A job taken back from ``source`` after waiting ``waited`` there and submitted to ``to``."""

    source: str
    job_id: str
    to: str
    new_job_id: str
    waited: str
    reason: str
    seen: tuple[Seen, ...] = ()
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "job_id": self.job_id,
            "to": self.to,
            "new_job_id": self.new_job_id,
            "waited": self.waited,
            "reason": self.reason,
            "seen": [s.to_dict() for s in self.seen],
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Move:
        return cls(
            str(data.get("from", "")),
            str(data.get("job_id", "")),
            str(data.get("to", "")),
            str(data.get("new_job_id", "")),
            str(data.get("waited", "?")),
            str(data.get("reason", "pending")),
            tuple(Seen.from_dict(s) for s in data.get("seen") or []),
            float(data.get("at") or 0.0),
        )


@dataclass(frozen=True)
class Stay:
    """A job past max_pending that kept its place on ``on``: no other target had room."""

    on: str
    reason: str = "pending"
    at: float = 0.0
    seen: tuple[Seen, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"on": self.on, "reason": self.reason, "at": self.at, "seen": [s.to_dict() for s in self.seen]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stay:
        return cls(
            str(data.get("on", "")),
            str(data.get("reason", "pending")),
            float(data.get("at") or 0.0),
            tuple(Seen.from_dict(s) for s in data.get("seen") or []),
        )


MAX_STAYS_KEPT = 5  # the job XCom keeps the last few "no other target has room" decisions


@dataclass(frozen=True)
class Choice:
    """Where a job runs among its spec's targets, and why: what each target had free (``seen``),
    the moves max_pending made, the times it kept its place (``stays``). ``departed``: the targets it
    left in this try (it never goes back). ``since``: when it started waiting where it is now;
    ``submitted_at``: when it was last submitted. Travels to XCom, to its trigger and back."""

    policy: str
    targets: tuple[str, ...]
    max_pending_s: float | None = None
    chosen: str | None = None
    since: float | None = None
    submitted_at: float | None = None
    seen: tuple[Seen, ...] = ()
    moves: tuple[Move, ...] = ()
    stays: tuple[Stay, ...] = ()
    departed: tuple[str, ...] = ()

    def to_dict(self, public: bool = False) -> dict[str, Any]:
        """The dict form; ``public`` (the XCom) leaves out what only the task needs."""
        out: dict[str, Any] = {
            "policy": self.policy,
            "targets": list(self.targets),
            "max_pending_s": self.max_pending_s,
            "chosen": self.chosen,
            "since": self.since,
            "submitted_at": self.submitted_at,
            "seen": [s.to_dict() for s in self.seen],
            "moves": [m.to_dict() for m in self.moves],
        }
        if self.stays:
            out["stays"] = [s.to_dict() for s in self.stays]
        if not public:
            out["departed"] = list(self.departed)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Choice | None:
        if not isinstance(data, dict) or not data:
            return None
        mp = data.get("max_pending_s")
        return cls(
            policy=str(data.get("policy") or "first-accepts"),
            targets=tuple(map(str, data.get("targets") or [])),
            max_pending_s=float(mp) if mp is not None else None,
            chosen=data.get("chosen"),
            since=number(data.get("since")),
            submitted_at=number(data.get("submitted_at")),
            seen=tuple(Seen.from_dict(s) for s in data.get("seen") or []),
            moves=tuple(Move.from_dict(m) for m in data.get("moves") or []),
            stays=tuple(Stay.from_dict(s) for s in data.get("stays") or []),
            departed=tuple(map(str, data.get("departed") or data.get("left") or [])),
        )

    def others(self, here: str) -> list[str]:
        """The targets a job waiting on ``here`` may move to: none it has left in this try."""
        return [t for t in self.targets if t != here and t not in self.departed]

    def stayed(self, stay: Stay, now: float) -> Choice:
        return replace(self, since=now, stays=(*self.stays, stay)[-MAX_STAYS_KEPT:])

    def summary(self) -> str | None:
        """The choice in one line (the flexorch page), or None for a job whose spec has one target:
        ``first-free: slurm full, ssh fits → ssh; moved from slurm after 10m00s (pending) → ssh``."""
        if len(self.targets) < 2:
            return None
        parts = []
        if self.seen:
            parts.append(f"{self.policy}: " + ", ".join(f"{s.target} {s.verdict}" for s in self.seen))
        parts += [f"moved from {m.source} after {m.waited} ({m.reason})" for m in self.moves]
        if self.stays and not self.moves:
            parts.append(f"waits on {self.stays[-1].on}: no other target has room")
        return "; ".join(parts) + f" → {self.chosen}" if parts else None


def number(value: Any) -> float | None:
    """A timestamp read back from a dict: a number, or None for anything else."""
    return float(value) if isinstance(value, int | float) else None
