"""Where a trigger has got to in its job's log, kept in the flexorch store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from flexorch_provider.backends.base import LogCursor
from flexorch_provider.store import get_store

SPACE = "log-cursors"


class LogCheckpoint:
    """How far a trigger has streamed its job's log, in the flexorch store, and which copy of the
    trigger streams it.

    A trigger's kwargs are fixed when the task defers, so a trigger restarted by a new triggerer
    would stream the log again from there. Each trigger records its cursor in the store instead,
    one poll behind (lines logged an interval ago have surely reached the task log), and a
    trigger restarted anywhere the store is shared resumes from it: after a triggerer restart or
    a trigger's move at most the last interval's lines appear twice, and none are lost.

    The copy that loads the cursor claims it (its token beside the cursor). A triggerer that
    stalled past Airflow's health threshold wakes up still running its copy until Airflow cancels
    it; that copy finds another token (or the cursor gone: the newer copy has finished) and
    :meth:`save` says so, so it stops streaming instead of logging the lines the new copy logs.

    The default store keeps them under ``$FLEXORCH_STATE_DIR/log-cursors``; a trigger removes its
    own when it fires or its task is killed; a week-old one is pruned (a live one is written at
    least daily).
    """

    MAX_AGE_S = 7 * 24 * 3600
    REFRESH_S = 24 * 3600
    _pruned = False

    def __init__(self, handle: dict[str, Any]) -> None:
        key = json.dumps([handle.get("target"), handle.get("job_id"), handle.get("run_key")])
        self.key = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.token = uuid.uuid4().hex
        self.saved: LogCursor | None = None
        self.claimed = False
        self.written = 0.0

    def load(self, start: LogCursor, furthest: Callable[[LogCursor, LogCursor], LogCursor]) -> LogCursor:
        """The further of ``start`` (from the task) and the recorded cursor, as the job's backend
        compares them (``Backend.furthest``); this copy claims it."""
        store = get_store()
        try:
            with store.locked(SPACE):
                value = store.get(SPACE, self.key)
                cursor = start
                with contextlib.suppress(KeyError, TypeError, AttributeError, ValueError):  # unreadable: start over
                    cursor = furthest(start, value["cursor"])  # type: ignore[index]
                self._put(store, cursor)
        except OSError:  # a read-only disk: no resuming, nothing else lost
            return start
        return cursor

    def _put(self, store: Any, cursor: LogCursor) -> None:
        store.put(SPACE, self.key, {"cursor": cursor, "owner": self.token})
        self.saved, self.claimed, self.written = cursor, True, time.time()

    def _lost(self, value: Any) -> bool:
        """Another copy follows the job now (it claimed the cursor), or has finished (removed it)."""
        return self.claimed and (not isinstance(value, dict) or value.get("owner") != self.token)

    def save(self, cursor: LogCursor) -> bool:
        """Record ``cursor``; False if another copy of this trigger has taken the job over."""
        store = get_store()
        try:
            if not LogCheckpoint._pruned:
                LogCheckpoint._pruned = True
                store.prune_keys(SPACE, time.time() - self.MAX_AGE_S)
            if cursor == self.saved and time.time() - self.written < self.REFRESH_S:
                return not self._lost(store.get(SPACE, self.key))
            with store.locked(SPACE):
                if self._lost(store.get(SPACE, self.key)):
                    return False
                self._put(store, cursor)
        except OSError:
            pass  # a read-only or full disk costs duplicate lines after a restart, nothing else
        return True

    def drop(self) -> None:
        with contextlib.suppress(OSError):
            get_store().delete(SPACE, self.key)
