"""Pod log records → byte cursors and marks (our logic; the emulator round trip is in
tests/integration/test_kubernetes_backend.py)."""

from __future__ import annotations

from flexorch_provider.backends.kubernetes import logs
from flexorch_provider.backends.kubernetes.logs import instant, mark_at, parse_records, read_from

WHERE = ("conn", "ns", "pod")


def test_kubelet_times_with_trimmed_zeros_and_node_offsets_become_one_scale():
    assert instant(b"2026-11-24T06:00:00.5Z") - instant(b"2026-11-24T06:00:00Z") == 500_000_000
    assert instant(b"2026-11-24T06:00:00.05Z") < instant(b"2026-11-24T06:00:00.123456789Z")
    assert instant(b"2026-11-24T08:00:00.25+02:00") == instant(b"2026-11-24T06:00:00.25Z")
    assert instant(b"2026-11-24T00:30:00-05:30") == instant(b"2026-11-24T06:00:00Z")
    assert instant(b"50%|#####") is None and instant(b"2026-11-24") is None


def test_a_carriage_return_stays_inside_its_line():
    records = parse_records(b"2026-11-24T06:00:00Z 10%|#\r50%|#####\r100%|##########\n")
    assert records is not None and len(records) == 1
    chunk = read_from(records, 0, None, WHERE)
    # one record (its time is not lost); shown as the three updates, as every target shows them
    assert chunk is not None and chunk.lines == ["10%|#", "50%|#####", "100%|##########"] and chunk.cursor == 32


def test_a_whole_read_from_a_cursor_between_records_marks_where_it_ended():
    logs.LOG_MARKS.clear()
    records = parse_records(b"2026-11-24T06:00:00.1Z a\n2026-11-24T06:00:00.1Z b\n2026-11-24T06:00:01Z c\n")
    chunk = read_from(records, 2, None, WHERE)
    assert chunk is not None and chunk.lines == ["b", "c"] and chunk.cursor == 6
    assert logs.LOG_MARKS[(*WHERE, 6)] == mark_at(records, 2)


def test_a_read_by_time_takes_what_follows_the_marked_line_in_log_order():
    # the marked line is the 2nd of three at .1; a line stamped earlier but written later (stdout
    # and stderr race) is new, and the line written before the mark but stamped later is not
    whole = parse_records(b"2026-11-24T06:00:00.3Z x\n2026-11-24T06:00:00.1Z a\n2026-11-24T06:00:00.1Z b\n")
    mark = mark_at(whole, 2)
    since = whole + parse_records(b"2026-11-24T06:00:00.1Z c\n2026-11-24T06:00:00.05Z d\n")
    chunk = read_from(since, 6, mark, WHERE)
    assert chunk is not None and chunk.lines == ["c", "d"] and chunk.cursor == 10


def test_a_mark_whose_line_is_not_there_asks_for_a_whole_read():
    whole = parse_records(b"2026-11-24T06:00:00.1Z a\n")
    assert read_from(parse_records(b"2026-11-24T06:00:00.1Z other\n"), 2, mark_at(whole, 0), WHERE) is None
    assert read_from([], 2, mark_at(whole, 0), WHERE) is None


def test_a_partial_last_line_waits_and_the_mark_stays():
    logs.LOG_MARKS.clear()
    records = parse_records(b"2026-11-24T06:00:00.1Z a\n2026-11-24T06:00:02Z half")
    chunk = read_from(records, 2, mark_at(records, 0), WHERE)
    assert chunk is not None and chunk.lines == [] and chunk.cursor == 2
    assert logs.LOG_MARKS[(*WHERE, 2)] == mark_at(records, 0)


def test_a_log_without_times_or_a_cursor_inside_a_record_reads_the_plain_way():
    assert parse_records(b"no timestamp here\n") is None
    records = parse_records(b"2026-11-24T06:00:00Z abcdef\n2026-11-24T06:00:01Z g\n")
    chunk = read_from(records, 3, None, WHERE)  # a cursor inside "abcdef" (a line read in pieces)
    assert chunk is not None and chunk.lines == ["def", "g"] and chunk.cursor == 9
