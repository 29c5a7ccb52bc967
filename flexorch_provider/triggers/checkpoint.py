"""Where a trigger has got to in its job's log, kept on the triggerer's disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexorch_provider.backends.base import LogCursor
from flexorch_provider.paths import state_dir


class LogCheckpoint:
    """How far a trigger has streamed its job's log, on the triggerer's own disk.

    A trigger's kwargs are fixed when the task defers, so a trigger restarted by a new
    triggerer would stream the log again from there. Each trigger records its cursor here
    instead, one poll behind (lines logged an interval ago have surely reached the task
    log), and a trigger restarted on the same machine resumes from it: after a triggerer
    restart at most the last interval's lines appear twice, and none are lost. Files live
    under ``$FLEXORCH_STATE_DIR`` (default ``$AIRFLOW_HOME/flexorch``)``/log-cursors``; a
    trigger removes its own when it fires or its task is killed; a week-old one is pruned.
    """

    MAX_AGE_S = 7 * 24 * 3600
    _pruned: set[Path] = set()

    def __init__(self, handle: dict[str, Any]) -> None:
        key = json.dumps([handle.get("target"), handle.get("job_id"), handle.get("run_key")])
        self.path = self.root() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        self.saved: LogCursor | None = None

    @staticmethod
    def root() -> Path:
        return state_dir() / "log-cursors"

    def load(self, start: LogCursor, furthest: Callable[[LogCursor, LogCursor], LogCursor]) -> LogCursor:
        """The further of ``start`` (from the task) and the recorded cursor, as the job's backend
        compares them (``Backend.furthest``)."""
        try:
            value = json.loads(self.path.read_text())["cursor"]
            self.saved = value
            return furthest(start, value)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing or unreadable: start over
            self.saved = None
            return start

    def save(self, cursor: LogCursor) -> None:
        if cursor == self.saved:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._prune()
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"cursor": cursor}))
            os.replace(tmp, self.path)
            self.saved = cursor
        except OSError:
            pass  # a read-only or full disk costs duplicate lines after a restart, nothing else

    def drop(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _prune(self) -> None:
        root = self.path.parent
        if root in self._pruned:
            return
        self._pruned.add(root)
        cutoff = time.time() - self.MAX_AGE_S
        for old in root.iterdir():
            with contextlib.suppress(OSError):
                if old.stat().st_mtime < cutoff:
                    old.unlink()
