"""Where a job runs among its spec's targets, and whether it moves: decisions, returned.

::

    placer = Placer(workload, log)
    handle, choice = placer.submit(job)      # found again anywhere, else the first target that takes it
                                             # (first-free: those with room first)
    placer.pending_until(handle, choice)     # when a job still pending is to be asked about (max_pending)
    decision = placer.after_pending(job, handle, why, choice)
                                             # it stays, or it was moved: follow decision.handle

A task whose job may move (``target_policy: first-free`` or ``max_pending`` with two or more targets)
first asks every target for its run key's live job, so a restarted or retried task never starts a
second one. The placer submits, withdraws and cancels through the backends; it logs what it decides
to the task's log and returns the handle to follow with the :class:`~.choice.Choice` so far. The
operator only follows and announces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from flexorch_provider.backends.base import JobHandle, JobState, ResolvedJob
from flexorch_provider.backends.registry import get_backend
from flexorch_provider.exceptions import BackendUnavailableError, NoCapacityError, SubmitError
from flexorch_provider.fanout import parallel
from flexorch_provider.masking import secret_refs
from flexorch_provider.placement import capacity
from flexorch_provider.placement.choice import Choice, Move, Stay

T = TypeVar("T")


class Log(Protocol):
    def info(self, msg: Any, /, *args: Any) -> Any: ...
    def warning(self, msg: Any, /, *args: Any) -> Any: ...


def first_that_accepts(targets: list[str], start: Callable[[Any], T], log: Log) -> tuple[str, T]:
    """``start(backend)`` on each target in order until one accepts (a SubmitError or an unreachable
    target passes to the next): the target and what ``start`` returned. None accepting: SubmitError
    with every refusal."""
    refusals: list[str] = []
    full = True  # every target refused for want of room now (NoCapacityError): later it may have some
    for target in targets:
        try:
            result = start(get_backend(target))
        except (SubmitError, BackendUnavailableError) as e:
            log.warning("target %s refused the job: %s", target, e)
            refusals.append(f"{target}: {e}")
            full = full and isinstance(e, NoCapacityError)
            continue
        if refusals:
            log.info("falling back: %s", "; ".join(refusals))
        return target, result
    raise (NoCapacityError if full and refusals else SubmitError)(
        "no target accepted the job:\n  " + "\n  ".join(refusals)
    )


@dataclass(frozen=True)
class Decision:
    """What became of a job past max_pending: the handle to follow and the choice so far.
    ``moved``: a new job on another target (the task announces it); else it keeps its place."""

    handle: JobHandle
    choice: Choice
    moved: bool


class Placer:
    """The target policy of one workload (``target``, ``target_policy``, ``max_pending``)."""

    def __init__(self, workload: Any, log: Log) -> None:
        self.workload = workload
        self.log = log
        self.targets = [str(t) for t in workload.target]

    @property
    def movable(self) -> bool:
        """The job may run on any target of its list, not only the first that accepts it."""
        w = self.workload
        return len(self.targets) > 1 and (w.target_policy == "first-free" or w.max_pending is not None)

    def new_choice(self) -> Choice:
        """The choice before anything is known: the policy, the targets, the max_pending deadline."""
        w = self.workload
        max_pending = w.max_pending.total_seconds() if w.max_pending else None
        return Choice(policy=w.target_policy, targets=tuple(self.targets), max_pending_s=max_pending)

    def submit(self, job: ResolvedJob) -> tuple[JobHandle, Choice]:
        """Submit (or find again) the job: its handle (with the secret references whoever follows it
        masks with) and the choice, for the log and the XCom."""
        w = self.workload
        choice = self.new_choice()
        found = self._find_anywhere(job) if self.movable else None
        if found is not None:
            target, handle = found
            self.log.info("found this run's job %s on target %s: following it (no second job)", handle.job_id, target)
        else:
            order = self.targets
            if w.target_policy == "first-free" and len(order) > 1:
                order, choice = self._first_free(choice)
            target, handle = first_that_accepts(order, lambda backend: backend.submit(job), self.log)
        for note in handle.notes:
            self.log.warning("%s", note)
        self.log.info("job %s running on target %s (run key %s)", handle.job_id, target, job.run_key)
        now = time.time()
        return self._with_refs(handle), replace(choice, chosen=target, since=now, submitted_at=now)

    def _with_refs(self, handle: JobHandle) -> JobHandle:
        # where the secrets live (never their values): whoever follows the job masks them in its output
        return handle.with_secret_refs(secret_refs(self.workload))

    def _first_free(self, choice: Choice) -> tuple[list[str], Choice]:
        """The targets, those with room for the job now first (target_policy first-free)."""
        seen = capacity.survey(self.workload, self.targets)
        for s in seen:
            self.log.info("first-free: %s", s.line)
        order = capacity.order(self.targets, seen)
        if not any(s.fits for s in seen):
            self.log.info(
                "first-free: no target has room for the job now; the first that accepts takes it (%s)",
                ", ".join(self.targets),
            )
        elif order[0] != self.targets[0]:
            ahead = ", ".join(self.targets[: self.targets.index(order[0])])
            self.log.info("first-free: %s has room now, ahead of %s", order[0], ahead)
        return order, replace(choice, seen=tuple(seen))

    def _find_anywhere(self, job: ResolvedJob) -> tuple[str, JobHandle] | None:
        """This run key's live job on any target of the list (a restarted or retried task whose job
        moved, or was placed by first-free): one live job per run key across all targets. Were
        there several (a task killed in the middle of a move), the first running one stays and
        the others are cancelled."""
        looks = parallel(self.targets, lambda t: get_backend(t).find(job))
        found: list[tuple[str, JobHandle]] = []
        for target, handle, error in looks:
            if error is not None:
                self.log.warning("could not look for this run's job on target %s: %s", target, error)
            elif handle is not None:
                found.append((target, handle))
        if len(found) <= 1:
            return found[0] if found else None
        states = {t: get_backend(t).poll([h])[h.job_id].state for t, h in found}
        keep = next(((t, h) for t, h in found if states[t] != JobState.PENDING), found[0])
        for other, extra in found:
            if (other, extra) != keep:
                self.log.warning("this run also had job %s on %s: cancelling it (one job per run)", extra.job_id, other)
                get_backend(other).cancel(extra)
        return keep

    def pending_until(self, handle: JobHandle, choice: Choice) -> float | None:
        """When a job still pending on its target is to be asked about (max_pending), if it can go
        anywhere else."""
        if choice.max_pending_s is None or not choice.others(handle.target):
            return None
        return (choice.since or time.time()) + choice.max_pending_s

    def after_pending(self, job: ResolvedJob, handle: JobHandle, why: str, choice: Choice) -> Decision:
        """max_pending has passed and the job has not started: cancel it where it waits and submit it
        to the next target with room, in the same try. It stays where it is when no other target has
        room now (asked again after max_pending), or when it started meanwhile (a started job never
        moves). ``job``: the workload resolved for this run again (a move submits it anew)."""
        here = handle.target
        now = time.time()
        waited = duration(now - (choice.submitted_at or choice.since or now))
        others = choice.others(here)
        seen = capacity.survey(self.workload, others)
        for s in seen:
            self.log.info("max_pending: %s", s.line)
        room = capacity.order([s.target for s in seen if s.fits is not False], seen)
        if not room:
            self.log.warning(
                "job %s has waited %s on %s (%s); no other target has room now (%s): it keeps its place there, "
                "asking again in %s",
                handle.job_id,
                waited,
                here,
                why,
                ", ".join(others),
                duration(choice.max_pending_s or 0),
            )
            return Decision(handle, choice.stayed(Stay(here, why, now, tuple(seen)), now), moved=False)
        if not get_backend(here).withdraw(handle):
            self.log.info(
                "job %s started on %s meanwhile: it stays there (a started job never moves)", handle.job_id, here
            )
            return Decision(handle, replace(choice, departed=tuple(t for t in self.targets if t != here)), moved=False)
        self.log.warning(
            "job %s waited %s on %s (%s): cancelled there, moving it to %s",
            handle.job_id,
            waited,
            here,
            why,
            " or ".join(room),
        )
        departed = (*choice.departed, here)
        try:
            target, new = first_that_accepts(room, lambda backend: backend.submit(job), self.log)
        except SubmitError as e:
            self.log.warning(
                "no other target took the job (%s): submitting it to %s again, where it stays in this try", e, here
            )
            target, new = here, get_backend(here).submit(job)
            departed = tuple(t for t in self.targets if t != here)
        self.log.info("job %s running on target %s (run key %s), moved from %s", new.job_id, target, job.run_key, here)
        now = time.time()
        move = Move(here, handle.job_id, target, new.job_id, waited, why, tuple(seen), now)
        moved = replace(
            choice, chosen=target, since=now, submitted_at=now, departed=departed, moves=(*choice.moves, move)
        )
        return Decision(self._with_refs(new), moved, moved=True)


def duration(seconds: float) -> str:
    """``75`` → ``1m15s``."""
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
