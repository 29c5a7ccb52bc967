"""Pod logs from a byte offset, without reading the whole log every poll.

The log API has no byte offsets, only ``sinceTime`` (and ``timestamps``: the kubelet's time
before every line). Cursors stay byte offsets into the log without the timestamps. After a
read this process remembers, per pod and cursor, the last line read: its time, how many lines
up to it had that time, and a digest of it (a *mark*). The next read asks for lines since a
second before that time, finds that line again and takes what follows it in the log, in log
order (stdout and stderr lines can be stamped slightly out of order). When the line is not
found, or a cursor was not handed out by this process (a restarted triggerer; the worker's
cursor in the triggerer), the whole log is read once; a log with a line without a time is
read the plain way. A failed request keeps the mark.
"""

from __future__ import annotations

import calendar
import collections
import hashlib
import re
import time
from typing import TYPE_CHECKING, cast

from flexorch_provider.backends.base import LogChunk, complete_lines

if TYPE_CHECKING:
    from flexorch_provider.backends.kubernetes.api import Api

Record = tuple[int, bytes]  # (nanoseconds since the epoch, UTC; the line with its newline)
Mark = tuple[int, int, bytes]  # (the line's time, how many lines up to it had that time, its digest)
Where = tuple[str, str, str]  # (connection, namespace, pod)

LOG_MARKS: collections.OrderedDict[tuple[str, str, str, int], Mark] = collections.OrderedDict()
MAX_LOG_MARKS = 4096
_STAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def instant(stamp: bytes) -> int | None:
    """An RFC 3339 time as the kubelet writes it (trailing zeros trimmed, the node's offset kept)
    → nanoseconds since the epoch; None if it is not one."""
    m = _STAMP.fullmatch(stamp)
    if m is None:
        return None
    seconds = calendar.timegm(time.strptime(m[1].decode(), "%Y-%m-%dT%H:%M:%S"))
    if m[3] != b"Z":
        sign = 1 if m[3][:1] == b"+" else -1
        seconds -= sign * (int(m[3][1:3]) * 3600 + int(m[3][4:6]) * 60)
    return seconds * 10**9 + int((m[2] or b"0").ljust(9, b"0"))


def parse_records(raw: bytes) -> list[Record] | None:
    """``time line`` records (split at newlines only: a progress bar's \\r stays in its line);
    None if one has no time (then nothing is assumed about the log's layout)."""
    pieces = raw.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    out = []
    for line in lines:
        stamp, _, rest = line.partition(b" ")
        at = instant(stamp)
        if at is None:
            return None
        out.append((at, rest))
    return out


def _digest(line: bytes) -> bytes:
    return hashlib.blake2b(line, digest_size=16).digest()


def mark_at(records: list[Record], i: int) -> Mark:
    """The mark of record ``i``: how to find that line again in a later read by time."""
    at, line = records[i]
    return at, sum(1 for a, _ in records[: i + 1] if a == at), _digest(line)


def read_from(records: list[Record], start: int, mark: Mark | None, where: Where) -> LogChunk | None:
    """The complete lines after byte ``start`` (timestamps removed) and the marks for the next
    read; None when ``mark``'s line is not in ``records`` (then read the whole log)."""
    if mark is not None:  # records since a second before the mark: find its line, take what follows
        at, count, digest = mark
        nth = [i for i, (a, _) in enumerate(records) if a == at]
        if len(nth) < count or _digest(records[nth[count - 1]][1]) != digest:
            return None
        first = nth[count - 1] + 1
    else:  # the whole log: the cursor must fall between two records
        offset, first = 0, 0
        while first < len(records) and offset < start:
            offset += len(records[first][1])
            first += 1
        if offset != start:
            return complete_lines(b"".join(line for _, line in records)[start:], start)
    chunk = complete_lines(b"".join(line for _, line in records[first:]), start)
    end = cast(int, chunk.cursor)  # complete_lines hands out byte offsets
    offset, last = start, first - 1
    for i in range(first, len(records)):
        if offset + len(records[i][1]) > end:
            break
        offset += len(records[i][1])
        last = i
    if last >= 0 and offset == end:
        LOG_MARKS[(*where, end)] = mark_at(records, last)
        while len(LOG_MARKS) > MAX_LOG_MARKS:
            LOG_MARKS.popitem(last=False)
    return chunk


def read_pod_log(api: Api, conn: str, ns: str, pod: str, start: int) -> LogChunk:
    """Complete lines of ``pod``'s log after byte ``start``: by time from this process's mark
    for that cursor, else the whole log once. API errors propagate (as ``ApiError``)."""
    where: Where = (conn, ns, pod)
    mark = LOG_MARKS.get((*where, start))
    if mark is not None:
        records = parse_records(api.pod_log(ns, pod, since_ns=mark[0] - 10**9))
        chunk = read_from(records, start, mark, where) if records is not None else None
        if chunk is not None:
            if chunk.cursor != start:
                LOG_MARKS.pop((*where, start), None)
            return chunk
    LOG_MARKS.pop((*where, start), None)
    records = parse_records(api.pod_log(ns, pod))
    if records is None:  # a line without the kubelet's time: read it the plain way
        return complete_lines(api.pod_log(ns, pod, timestamps=False)[start:], start)
    chunk = read_from(records, start, None, where)
    return chunk if chunk is not None else LogChunk([], start)
