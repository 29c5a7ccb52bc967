"""Where a trigger has got to in its job's log, kept in the flexorch store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from flexorch_provider.backends.base import LogCursor
from flexorch_provider.store import get_store

SPACE = "log-cursors"


class LogCheckpoint:
    """How far a trigger has streamed its job's log, in the flexorch store.

    A trigger's kwargs are fixed when the task defers, so a trigger restarted by a new triggerer
    would stream the log again from there. Each trigger records its cursor in the store instead,
    one poll behind (lines logged an interval ago have surely reached the task log), and a
    trigger restarted anywhere the store is shared resumes from it: after a triggerer restart or
    a trigger's move at most the last interval's lines appear twice, and none are lost. The
    default store keeps them under ``$FLEXORCH_STATE_DIR/log-cursors``; a trigger removes its own
    when it fires or its task is killed; a week-old one is pruned.
    """

    MAX_AGE_S = 7 * 24 * 3600
    _pruned = False

    def __init__(self, handle: dict[str, Any]) -> None:
        key = json.dumps([handle.get("target"), handle.get("job_id"), handle.get("run_key")])
        self.key = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.saved: LogCursor | None = None

    def load(self, start: LogCursor, furthest: Callable[[LogCursor, LogCursor], LogCursor]) -> LogCursor:
        """The further of ``start`` (from the task) and the recorded cursor, as the job's backend
        compares them (``Backend.furthest``)."""
        try:
            value = (get_store().get(SPACE, self.key) or {})["cursor"]
            self.saved = value
            return furthest(start, value)
        except (KeyError, TypeError, AttributeError, ValueError):  # missing or unreadable: start over
            self.saved = None
            return start

    def save(self, cursor: LogCursor) -> None:
        if cursor == self.saved:
            return
        store = get_store()
        try:
            if not LogCheckpoint._pruned:
                LogCheckpoint._pruned = True
                store.prune_keys(SPACE, time.time() - self.MAX_AGE_S)
            store.put(SPACE, self.key, {"cursor": cursor})
            self.saved = cursor
        except OSError:
            pass  # a read-only or full disk costs duplicate lines after a restart, nothing else

    def drop(self) -> None:
        with contextlib.suppress(OSError):
            get_store().delete(SPACE, self.key)
