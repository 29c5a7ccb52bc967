"""Readings shared by every viewer of the flexorch page.

A reading (one pool's inventory, one batch of job statuses, one service's replicas) is fetched
at most once per ``ttl`` however many pages ask: a second viewer gets the first one's answer,
and a viewer who asks while a fetch is on its way waits for that fetch (no second sweep). A
viewer waits at most ``wait`` seconds; a slower source answers with what it said last (marked
stale) or "still asking", and its fetch goes on in the background for the next viewer. A
source that fails says why, and the rest of the page does not wait for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flexorch_provider.fanout import reason

KEEP_S = 600.0  # a reading nobody asked for in this long is forgotten


@dataclass
class Reading:
    value: Any = None
    error: str | None = None
    at: float | None = None  # when the value (or error) was read (time.time())
    fetching_since: float | None = None  # a fetch on its way (monotonic)

    def public(self, now: float | None = None) -> dict[str, Any]:
        """What the API says about a reading besides its value."""
        now = time.time() if now is None else now
        out: dict[str, Any] = {"age_s": None if self.at is None else round(max(0.0, now - self.at), 1)}
        if self.error is not None:
            out["error"] = self.error
        if self.fetching_since is not None:
            slow = time.monotonic() - self.fetching_since
            out["slow"] = (
                f"no answer for {slow:.0f}s: still asking"
                if self.at is None
                else (f"showing what it said {out['age_s']:.0f}s ago; asked again {slow:.0f}s ago, no answer yet")
            )
        return out


class Shared:
    """Keyed readings with a time to live (see the module docstring)."""

    def __init__(self, ttl: float = 10.0, wait: float = 3.0) -> None:
        self.ttl = ttl
        self.wait = wait
        self._lock = threading.Lock()
        self._readings: dict[str, Reading] = {}
        self._done: dict[str, threading.Event] = {}
        self.fetches = 0  # how many fetches ran (tests and the bench count them)
        self._pruned = time.time()

    def get(self, key: str, fetch: Callable[[], Any], ttl: float | None = None) -> Reading:
        ttl = self.ttl if ttl is None else ttl
        with self._lock:
            self._prune()
            reading = self._readings.get(key)
            fresh = reading is not None and reading.at is not None and time.time() - reading.at < ttl
            if fresh and reading is not None:
                return reading
            done = self._done.get(key)
            if done is None:  # nobody is fetching it: this viewer starts the fetch
                done = self._done[key] = threading.Event()
                reading = self._readings.setdefault(key, Reading())
                reading.fetching_since = time.monotonic()
                threading.Thread(
                    target=self._fetch, args=(key, fetch, done), daemon=True, name=f"flexorch-read-{key}"
                ).start()
        done.wait(self.wait)
        with self._lock:
            return self._readings[key]

    def _fetch(self, key: str, fetch: Callable[[], Any], done: threading.Event) -> None:
        value, error = None, None
        try:
            value = fetch()
        except Exception as e:
            error = reason(e)
        with self._lock:
            self.fetches += 1
            old = self._readings.get(key) or Reading()
            if error is None:
                self._readings[key] = Reading(value=value, at=time.time())
            else:  # the last good value stays visible beside the error
                self._readings[key] = Reading(value=old.value, error=error, at=time.time())
            del self._done[key]
        done.set()

    def _prune(self) -> None:
        """Forget readings nobody asked for in a while (keys come and go with the jobs polled)."""
        now = time.time()
        if now - self._pruned < KEEP_S / 10:
            return
        self._pruned = now
        for key in [
            k for k, r in self._readings.items() if k not in self._done and r.at is not None and now - r.at > KEEP_S
        ]:
            del self._readings[key]

    def clear(self) -> None:
        with self._lock:
            self._readings.clear()
