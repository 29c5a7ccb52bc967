"""Job logs: reading complete lines from a byte cursor, and masking secret values.

Both are used beyond the runner: ``backends.base.complete_lines`` splits Slurm and Kubernetes
logs with :func:`complete_lines`, and :class:`Masker` masks text lines the same way the
supervisor masks the bytes it writes.
"""

import os

MAX_LOG_READ = 1 << 20
MASK = "***"
MASK_BYTES = MASK.encode("ascii")
MIN_MASK_LEN = 4  # shorter values would mask half the log ("1", "true")


def complete_lines(data, limit=MAX_LOG_READ):
    """(lines, consumed): the complete lines at the start of ``data`` and the bytes they take.

    A partial last line waits for its newline; a line longer than ``limit`` comes in pieces.
    Bytes are decoded as UTF-8 (invalid bytes replaced).
    """
    data = data[:limit]
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) < limit:
            return [], 0
        end = len(data) - 1  # one huge line: hand it over in pieces
    return data[: end + 1].decode("utf-8", "replace").splitlines(), end + 1


def read_log(run_dir, cursor, limit=MAX_LOG_READ):
    """Complete lines of ``RUN_DIR/log`` after byte ``cursor`` and the new cursor (past the last newline read)."""
    try:
        with open(os.path.join(run_dir, "log"), "rb") as f:
            f.seek(cursor)
            data = f.read(limit)
    except (OSError, ValueError):
        return [], cursor
    lines, consumed = complete_lines(data, limit)
    return lines, cursor + consumed


TAIL_READ = 256 * 1024  # a tail reads at most this much from the end of the log


def tail_log(run_dir, count):
    """The last ``count`` complete lines of ``RUN_DIR/log`` and the cursor past them (where a
    follower goes on from)."""
    try:
        with open(os.path.join(run_dir, "log"), "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(0, size - TAIL_READ)
            f.seek(start)
            data = f.read(size - start)
    except (OSError, ValueError):
        return [], 0
    end = data.rfind(b"\n")
    if end < 0:
        return [], start
    body = data[: end + 1]
    if start > 0:  # the first line read is only the end of one
        body = body[body.find(b"\n") + 1 :]
    lines = body.decode("utf-8", "replace").splitlines()
    return lines[-count:] if count > 0 else [], start + end + 1


class Masker(object):
    """Replaces secret values (those of :data:`MIN_MASK_LEN` characters or more, longest first, so
    a value inside a longer one leaves nothing of the longer one) with ``***``.

    ``masker(line)`` masks text; ``masker.mask_bytes(data)`` masks UTF-8 bytes (the supervisor's
    output stream).
    """

    def __init__(self, values):
        self.values = sorted({v for v in values if len(v) >= MIN_MASK_LEN}, key=len, reverse=True)
        self.encoded = sorted({v.encode("utf-8") for v in self.values}, key=len, reverse=True)

    def __call__(self, line):
        return _replaced(line, self.values, MASK)

    def mask_bytes(self, data):
        return _replaced(data, self.encoded, MASK_BYTES)


def _replaced(data, values, mask):
    for value in values:
        if value in data:
            data = data.replace(value, mask)
    return data


def mask_text(values, line):
    """``line`` with the secret ``values`` masked (see :class:`Masker`; keep one for many lines)."""
    return Masker(values)(line)
