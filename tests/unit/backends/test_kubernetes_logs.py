"""Pod log records → byte cursors and time marks (our logic; the emulator round trip is in
tests/integration/test_kubernetes_backend.py)."""

from __future__ import annotations

from flexorch_provider.backends import kubernetes
from flexorch_provider.backends.kubernetes import _read_from, _records, _ts_key

WHERE = ("conn", "ns", "pod")


def test_timestamps_sort_as_text_whatever_zeros_the_kubelet_trimmed():
    stamps = [
        "2026-11-24T06:00:00Z",
        "2026-11-24T06:00:00.05Z",
        "2026-11-24T06:00:00.5Z",
        "2026-11-24T06:00:00.123456789Z",
    ]
    assert sorted(stamps, key=_ts_key) == [stamps[0], stamps[1], stamps[3], stamps[2]]
    assert _ts_key("2026-11-24T06:00:00.5Z") == "2026-11-24T06:00:00.500000000Z"


def test_a_whole_read_from_a_cursor_between_records_marks_where_it_ended():
    kubernetes._LOG_MARKS.clear()
    raw = b"2026-11-24T06:00:00.1Z a\n2026-11-24T06:00:00.1Z b\n2026-11-24T06:00:01Z c\n"
    chunk = _read_from(_records(raw), 2, None, WHERE)
    assert chunk.lines == ["b", "c"] and chunk.cursor == 6
    assert kubernetes._LOG_MARKS[(*WHERE, 6)] == ("2026-11-24T06:00:01.000000000Z", 1)


def test_a_read_by_time_skips_what_the_mark_says_was_read():
    kubernetes._LOG_MARKS.clear()
    since = b"2026-11-24T06:00:00.1Z a\n2026-11-24T06:00:00.1Z b\n2026-11-24T06:00:00.1Z c\n"
    chunk = _read_from(_records(since), 4, ("2026-11-24T06:00:00.100000000Z", 2), WHERE)
    assert chunk.lines == ["c"] and chunk.cursor == 6
    assert kubernetes._LOG_MARKS[(*WHERE, 6)] == ("2026-11-24T06:00:00.100000000Z", 3)


def test_a_partial_last_line_waits_and_the_mark_stays():
    kubernetes._LOG_MARKS.clear()
    mark = ("2026-11-24T06:00:00.100000000Z", 1)
    chunk = _read_from(_records(b"2026-11-24T06:00:00.1Z a\n2026-11-24T06:00:02Z half"), 2, mark, WHERE)
    assert chunk.lines == [] and chunk.cursor == 2 and kubernetes._LOG_MARKS[(*WHERE, 2)] == mark


def test_a_log_without_timestamps_or_a_cursor_inside_a_record_reads_the_plain_way():
    assert _records(b"no timestamp here\n") is None
    raw = b"2026-11-24T06:00:00Z abcdef\n2026-11-24T06:00:01Z g\n"
    chunk = _read_from(_records(raw), 3, None, WHERE)  # a cursor inside "abcdef" (a line read in pieces)
    assert chunk.lines == ["def", "g"] and chunk.cursor == 9
