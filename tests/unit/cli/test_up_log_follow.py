"""`flexorch up --run` follows a task log through the REST API, whose source lines change count."""

from __future__ import annotations

import collections

from flexorch_provider.cli.up import _new_lines


def header(*sources: str) -> list[dict]:
    return [
        {"event": "::group::Log message source details"},
        *({"event": s} for s in sources),
        {"event": "::endgroup::"},
    ]


def record(second: int, event: str) -> dict:
    return {"timestamp": f"2026-11-24T05:49:{second:02d}.000000Z", "event": event}


LOCAL = "/srv/airflow/logs/dag_id=d/run_id=r/task_id=t/attempt=1.log"
SERVED = "http://vm:8793/log/dag_id=d/run_id=r/task_id=t/attempt=1.log"


def test_lines_are_printed_once_although_the_source_header_shrinks():
    # seen while the task ran: local file + worker log server; after it ended: the local file only
    running = [*header(LOCAL, SERVED), record(31, "step 1"), record(32, "step 2")]
    ended = [*header(LOCAL), record(31, "step 1"), record(32, "step 2"), record(33, "step 3"), record(34, "done")]
    done: collections.Counter = collections.Counter()
    assert _new_lines(running, done) == ["step 1", "step 2"]
    assert _new_lines(ended, done) == ["step 3", "done"]
    assert _new_lines(ended, done) == []


def test_a_line_repeated_at_another_time_is_printed_again_and_true_duplicates_count():
    done: collections.Counter = collections.Counter()
    first = [record(31, "tick"), record(32, "tick")]
    assert _new_lines(first, done) == ["tick", "tick"]
    # a later read that holds one record twice (two sources, same line) prints it once more only
    # if it really is there twice in one read
    assert _new_lines([record(31, "tick"), record(32, "tick"), record(33, "tick")], done) == ["tick"]


def test_lines_without_a_timestamp_are_kept_and_the_source_group_and_markers_are_dropped():
    done: collections.Counter = collections.Counter()
    entries = [*header(LOCAL, "Could not read served logs: refused"), {"event": "::group::Pre Execute"},
               {"event": "plain text log line"}, {"event": "::endgroup::"}]  # fmt: skip
    assert _new_lines(entries, done) == ["plain text log line"]
    assert _new_lines(entries, done) == []
