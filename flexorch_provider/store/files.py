"""The default store: files under one folder (``$FLEXORCH_STATE_DIR``).

A key is a file ``<space>/<key>.json`` (replaced whole, so a reader never sees half of one),
a space's records one JSON line each in ``<space>.jsonl`` (one append per record: appends do
not interleave), a lock ``<name>.lock`` held with ``flock``. Every machine that should see the
same state must mount the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
COMPACT_BYTES = 4 << 20  # a space's records are rewritten without old ones once the file is this large


class FileStore:
    def __init__(self, root: Path, shared: bool = False) -> None:
        self.root = Path(root)
        self.shared = shared

    def describe(self) -> str:
        return f"the folder {self.root}"

    # --- keys ------------------------------------------------------------------------------
    def _path(self, space: str, key: str) -> Path:
        name = key if SAFE_KEY.match(key) else hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.root / space / f"{name}.json"

    def get(self, space: str, key: str) -> Any | None:
        try:
            return json.loads(self._path(space, key).read_text())
        except (OSError, ValueError):  # missing, or torn by a crash: as if never written
            return None

    def put(self, space: str, key: str, value: Any) -> None:
        path = self._path(space, key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)

    def delete(self, space: str, key: str) -> None:
        with contextlib.suppress(OSError):
            self._path(space, key).unlink()

    def prune_keys(self, space: str, before: float) -> None:
        folder = self.root / space
        with contextlib.suppress(OSError):
            for path in folder.iterdir():
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < before:
                        path.unlink()

    # --- records ---------------------------------------------------------------------------
    def _log(self, space: str) -> Path:
        return self.root / f"{space}.jsonl"

    def append(self, space: str, record: dict[str, Any]) -> None:
        path = self._log(space)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # the newline first: a line torn by a writer that crashed mid-write costs that line only
        line = "\n" + json.dumps(record, sort_keys=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def records(self, space: str) -> list[dict[str, Any]]:
        try:
            text = self._log(space).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line of a crashed writer
            if isinstance(record, dict):
                out.append(record)
        return out

    def prune(self, space: str, before: float) -> None:
        """Rewrite the space's file without records older than ``before``, once it is large."""
        path = self._log(space)
        try:
            if path.stat().st_size < COMPACT_BYTES:
                return
        except FileNotFoundError:
            return
        keep = [r for r in self.records(space) if float(r.get("at", 0)) >= before]
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines("\n" + json.dumps(r, sort_keys=True) for r in keep)
        os.replace(tmp, path)

    # --- locks -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / f"{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
