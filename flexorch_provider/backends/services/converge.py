"""The converge: from the replicas found on the hosts to the desired state, fewest changes first
(see the package docstring for the order of work)."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Generic

from flexorch_provider.backends.base import ship_code, submit_payload
from flexorch_provider.backends.services.state import LIVE, Desired, Fleet, H, Replica
from flexorch_provider.exceptions import BackendError, ConfigurationError, NoCapacityError, ServiceError
from flexorch_provider.fanout import parallel, reason

TAIL_LINES = 20
DRAIN_S = 3.0  # a scaled-down replica's time to finish its requests once it reads unready


class Converger(Generic[H]):
    def __init__(self, fleet: Fleet[H], desired: Desired, log: Callable[[str], None]) -> None:
        self.fleet = fleet
        self.want = desired
        self.log = log
        self.reachable: list[H] = []
        self.changes: list[str] = []

    # --- talking to hosts ----------------------------------------------------------------
    def _json_lines(self, host: H, *args: str, stdin: bytes | None = None) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.fleet.call(host, list(args), stdin).splitlines() if line.strip()]

    def observe(self) -> tuple[list[Replica[H]], dict[str, str]]:
        def look(host: H) -> list[dict[str, Any]]:
            return self._json_lines(host, "replicas", self.want.directory)

        found: list[Replica[H]] = []
        unreachable: dict[str, str] = {}
        self.reachable = []
        for host, rows, error in parallel(self.fleet.hosts, look):
            if error is not None:
                if isinstance(error, ConfigurationError):
                    raise error
                unreachable[self.fleet.label(host)] = reason(error)
                continue
            self.reachable.append(host)
            for r in rows:
                if r.get("slot") is None:
                    continue  # not a replica we started
                found.append(
                    Replica(
                        host,
                        int(r["slot"]),
                        str(r["revision"]),
                        r["key_dir"],
                        r["run_dir"],
                        r["state"],
                        float(r.get("age") or 0),
                        r.get("message", ""),
                    )
                )
        return found, unreachable

    def where(self, r: Replica[H]) -> str:
        return f"replica {r.slot} ({r.revision}) on {self.fleet.label(r.host)}"

    def retire(self, r: Replica[H], why: str) -> None:
        self.log(f"{self.where(r)}: {why}: stopping it")
        self._json_lines(r.host, "retire", r.key_dir)
        self.changes.append(f"retired {self.where(r)}: {why}")

    def drain(self, replicas: Sequence[Replica[H]]) -> None:
        """Take replicas that are about to be scaled down out of service first: their health reads
        unready (whoever routes by it stops sending them requests), then they get DRAIN_S to finish."""
        if not replicas:
            return
        for r in replicas:
            try:
                self._json_lines(r.host, "drain", r.run_dir)
                self.log(f"{self.where(r)}: draining (health unready) before it stops")
            except BackendError as e:
                self.log(f"{self.where(r)}: could not drain it ({e}); stopping it anyway")
        time.sleep(DRAIN_S)

    def start(self, slot: int, host: H) -> Replica[H]:
        doc = self.want.documents[slot]
        key_dir = f"{self.want.directory}/{slot}-{self.want.revision}"
        payload = submit_payload(doc, self.want.secrets, self.want.registry)
        try:
            for note in ship_code(
                self.want.code, lambda a, d: self.fleet.call(host, list(a), d), self.fleet.label(host)
            ):
                self.log(note)
            out = self._json_lines(host, "submit", key_dir, stdin=payload)[0]
        except ServiceError:
            raise
        except BackendError as e:  # e.g. the host has no free GPU for it
            raise ServiceError(f"service {self.want.name}: cannot start replica {slot}: {e}") from e
        r = Replica(host, slot, self.want.revision, key_dir, out["run_dir"], "pending", 0.0)
        self.log(f"{self.where(r)}: {'already running' if out.get('reattached') else 'started'}")
        self.changes.append(f"started {self.where(r)}")
        return r

    def health(self, replicas: Sequence[Replica[H]]) -> dict[str, dict[str, Any]]:
        by_host: dict[str, list[Replica[H]]] = collections.defaultdict(list)
        for r in replicas:
            by_host[self.fleet.label(r.host)].append(r)
        out: dict[str, dict[str, Any]] = {}

        def check(key: str) -> list[dict[str, Any]]:
            group = by_host[key]
            return self._json_lines(group[0].host, "health", *(r.run_dir for r in group))

        for key, rows, error in parallel(list(by_host), check):
            if error is not None:
                for r in by_host[key]:
                    out[r.run_dir] = {"healthy": False, "state": "unknown", "detail": reason(error)}
                continue
            for row in rows:
                out[row["run_dir"]] = row
        return out

    def wait_healthy(self, replicas: Sequence[Replica[H]]) -> dict[str, str]:
        """Wait until every replica is healthy; returns {run_dir: why} for those that never got there."""
        waiting = {r.run_dir: r for r in replicas}
        failed: dict[str, str] = {}
        last: dict[str, str] = {}
        started = time.monotonic()
        while waiting:
            for run_dir, row in self.health(list(waiting.values())).items():
                r = waiting.get(run_dir)
                if r is None:
                    continue
                if row.get("healthy"):
                    self.log(f"{self.where(r)}: healthy after {time.monotonic() - started:.1f}s ({row.get('detail')})")
                    del waiting[run_dir]
                elif row.get("state") not in (*LIVE, "unknown"):
                    failed[run_dir] = f"{self.where(r)} exited ({row.get('state')}, exit {row.get('exit_code')})"
                    failed[run_dir] += self.tail(r)
                    del waiting[run_dir]
                else:
                    last[run_dir] = str(row.get("detail", ""))
            if not waiting or time.monotonic() - started > self.want.grace_s:
                break
            time.sleep(self.want.interval_s)
        for run_dir, r in waiting.items():
            failed[run_dir] = (
                f"{self.where(r)} is not healthy after {self.want.grace_s:.0f}s: {last.get(run_dir, 'no answer')}"
                + self.tail(r)
            )
        return failed

    def tail(self, r: Replica[H]) -> str:
        try:
            data = json.loads(self.fleet.call(r.host, ["log", r.run_dir, "0"], None))
        except (BackendError, ValueError):
            return ""
        lines = data.get("lines", [])[-TAIL_LINES:]
        return ("\n  last log lines:\n    " + "\n    ".join(lines)) if lines else ""

    # --- placement -------------------------------------------------------------------------
    def pick_host(
        self,
        load: collections.Counter[str],
        prefer: H | None = None,
        avoid: H | None = None,
        refused: Collection[str] = (),
    ) -> H | None:
        """A reachable host for a new replica (not ``avoid``, none whose label is in ``refused``);
        with a port, only a host without one of ours."""
        choices = [h for h in self.reachable if h != avoid and self.fleet.label(h) not in refused]
        if self.want.port is not None:
            choices = [h for h in choices if load[self.fleet.label(h)] == 0]
        if not choices:
            return None
        if prefer is not None and prefer in choices:
            return prefer
        order = {self.fleet.label(h): i for i, h in enumerate(self.fleet.hosts)}
        return min(choices, key=lambda h: (load[self.fleet.label(h)], order[self.fleet.label(h)]))

    def place(
        self, slot: int, load: collections.Counter[str], prefer: H | None = None, avoid: H | None = None
    ) -> Replica[H]:
        """Start replica ``slot`` on the best host that takes it. A host without room (no free GPU of
        the model the spec asks for) started nothing: the next host is tried. Any other failure
        ends the converge (the replica may have started; the next converge sees it)."""
        refused: dict[str, str] = {}
        last: NoCapacityError | None = None
        while (host := self.pick_host(load, prefer=prefer, avoid=avoid, refused=refused)) is not None:
            try:
                r = self.start(slot, host)
            except ServiceError as e:
                if not isinstance(e.__cause__, NoCapacityError):
                    raise
                last = e.__cause__
                refused[self.fleet.label(host)] = str(last)
                self.log(f"replica {slot}: {self.fleet.label(host)} cannot take it ({refused[self.fleet.label(host)]})")
                continue
            load[self.fleet.label(host)] += 1
            return r
        if not refused:
            raise self.no_room(slot)
        raise ServiceError(
            f"service {self.want.name}: no host can start replica {slot}:\n"
            + "\n".join(f"  {label}: {why}" for label, why in refused.items())
        ) from last

    def no_room(self, slot: int) -> ServiceError:
        n = len(self.reachable)
        return ServiceError(
            f"service {self.want.name}: no host can take replica {slot}: each replica listens on port "
            f"{self.want.port}, so {self.want.replicas} replicas need {self.want.replicas} hosts and {n} "
            f"{'is' if n == 1 else 'are'} reachable; add hosts to ssh.hosts or lower replicas"
        )

    # --- the converge ------------------------------------------------------------------------
    def undeploy(self) -> dict[str, Any]:
        found, unreachable = self.observe()
        for r in found:
            self.retire(r, "undeploy") if r.live else self._json_lines(r.host, "retire", r.key_dir)
        if unreachable:
            raise ServiceError(
                f"service {self.want.name}: undeployed from the reachable hosts, but "
                + "; ".join(f"{h}: {why}" for h, why in unreachable.items())
                + " — replicas there may still run; run undeploy again once the hosts are back"
            )
        self.log(f"service {self.want.name}: undeployed ({len([r for r in found if r.live])} replicas stopped)")
        return self.summary([])

    def converge(self) -> dict[str, Any]:
        want = self.want
        found, unreachable = self.observe()
        for label, why in unreachable.items():
            self.log(f"{label} is unreachable ({why}): replicas there count as lost")
        if not self.reachable:
            raise ServiceError(f"service {want.name}: no host is reachable: " + "; ".join(unreachable.values()))

        # 1. what is dead, extra or duplicated goes (dead ones keep their logs under .retired/)
        for r in found:
            if not r.live:
                self.retire(r, f"it is not running ({r.state}: {r.message})")
        live = sorted((r for r in found if r.live), key=lambda r: (r.revision != want.revision, r.age))
        slots: dict[int, Replica[H]] = {}
        self.drain([r for r in live if r.slot not in want.slots])
        for r in live:
            if r.slot not in want.slots:
                self.retire(r, f"scaled down to {want.replicas} replicas")
            elif r.slot in slots:
                self.retire(r, f"duplicate of {self.where(slots[r.slot])}")
            else:
                slots[r.slot] = r

        # 2. replicas unhealthy past their grace are restarted
        checks = self.health(list(slots.values()))
        for slot, r in list(slots.items()):
            row = checks.get(r.run_dir, {})
            if not row.get("healthy") and r.age > want.grace_s:
                self.retire(r, f"unhealthy: {row.get('detail')}")
                del slots[slot]

        load: collections.Counter[str] = collections.Counter(self.fleet.label(r.host) for r in slots.values())
        previous = {r.slot: r.host for r in found}

        # 3. empty slots get the wanted revision (they serve nothing now, so all at once)
        started = []
        for slot in want.slots:
            if slot in slots:
                continue
            started.append(self.place(slot, load, prefer=previous.get(slot)))
        failures = self.wait_healthy(started) if started else {}
        for r in started:
            slots[r.slot] = r
        if failures:
            raise ServiceError(f"service {want.name}: " + "\n".join(failures.values()))

        # 4. old revisions are replaced one slot at a time, each gated on health
        old = [r for r in slots.values() if r.revision != want.revision]
        if old and want.strategy == "recreate":
            for r in old:
                self.retire(r, f"recreate with revision {want.revision}")
                load[self.fleet.label(r.host)] -= 1
            fresh = [self.place(r.slot, load, prefer=r.host) for r in old]
            failures = self.wait_healthy(fresh)
            if failures:
                raise ServiceError(f"service {want.name}: recreate failed: " + "\n".join(failures.values()))
            old = []
        for done, r in enumerate(sorted(old, key=lambda r: r.slot)):
            self.replace(r, load, remaining=len(old) - done)

        # 5. the final word: every slot healthy at the wanted revision
        final = [r for r in self.observe()[0] if r.live and r.revision == want.revision and r.slot in want.slots]
        checks = self.health(final)
        healthy = sorted({r.slot for r in final if checks.get(r.run_dir, {}).get("healthy")})
        if len(healthy) < want.replicas:
            missing = sorted(set(want.slots) - set(healthy))
            raise ServiceError(f"service {want.name}: replicas {missing} are not healthy at revision {want.revision}")
        self.log(
            f"service {want.name}: {want.replicas}/{want.replicas} replicas healthy at revision {want.revision}"
            + ("" if self.changes else " (nothing to change)")
        )
        return self.summary(final)

    @property
    def may_update_in_place(self) -> bool:
        """Unset max_unavailable allows one replica down when no host has room for an extra one."""
        return self.want.max_unavailable is None or self.want.max_unavailable >= 1

    def replace(self, old: Replica[H], load: collections.Counter[str], remaining: int) -> None:
        """Rolling update of one slot: surge onto a free host, or stop-then-start in place."""
        want = self.want
        surge: Replica[H] | None = None
        if want.max_surge >= 1 and self.pick_host(load, avoid=old.host) is not None:
            try:
                surge = self.place(old.slot, load, avoid=old.host)
            except ServiceError as e:
                if not isinstance(e.__cause__, NoCapacityError):
                    raise
                if not self.may_update_in_place:
                    raise ServiceError(
                        f"{e}\nrolling update to {want.revision} stopped: {remaining} replica(s) keep serving "
                        f"revision {old.revision}; no other host has room for an extra replica and "
                        "update.max_unavailable is 0: unset it (or set 1) to update in place one replica at a time"
                    ) from e.__cause__
                self.log(f"replica {old.slot}: no other host has room ({e.__cause__}); updating it in place")
        if surge is not None:
            new, host = surge, surge.host
            failures = self.wait_healthy([new])
            if failures:
                self.retire(new, "never became healthy")
                raise ServiceError(
                    f"service {want.name}: rolling update to {want.revision} stopped: {failures[new.run_dir]}\n"
                    f"{remaining} replica(s) keep serving revision {old.revision}; fix the spec and deploy again"
                )
            self.retire(old, f"replaced by revision {want.revision} on {self.fleet.label(host)}")
            load[self.fleet.label(old.host)] -= 1
            return
        if not self.may_update_in_place:
            raise ServiceError(
                f"service {want.name}: rolling update needs a free host for the extra replica (max_surge), but "
                f"port {want.port} is taken on every reachable host and update.max_unavailable is 0: add a host, "
                "or unset max_unavailable (or set 1) to update in place one replica at a time"
            )
        self.retire(old, f"update in place to revision {want.revision}")
        new = self.start(old.slot, old.host)
        failures = self.wait_healthy([new])
        if failures:
            raise ServiceError(
                f"service {want.name}: rolling update to {want.revision} stopped: {failures[new.run_dir]}\n"
                f"replica {old.slot} is down; {remaining - 1} replica(s) keep serving revision {old.revision}; "
                "fix the spec and deploy again"
            )

    def summary(self, replicas: Sequence[Replica[H]]) -> dict[str, Any]:
        return {
            "service": self.want.name,
            "revision": self.want.revision,
            "replicas": [
                {"slot": r.slot, "host": self.fleet.label(r.host), "run_dir": r.run_dir}
                for r in sorted(replicas, key=lambda r: r.slot)
            ],
            "changes": list(self.changes),
        }
