"""`flexorch up --run` follows a task log through the REST API, whose source lines change count."""

from __future__ import annotations

import collections

from flexorch_provider.client.progress import new_lines as _new_lines


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


class RetryingStack:
    """A stand-in for the REST API (our own loop under test): try 1 writes two lines, the third
    reaches its log only after try 2 has started; try 2 writes one line and the run succeeds."""

    def __init__(self):
        self.round = 0

    def wait_dag(self, dag_id, timeout):
        return {}

    def trigger(self, dag_id, logical_date):
        return "run-1"

    def dag_run(self, dag_id, run_id):
        self.round += 1
        return {"state": "success" if self.round >= 3 else "running"}

    def task_instances(self, dag_id, run_id):
        return [{"task_id": "batch", "try_number": 1 if self.round == 1 else 2, "start_date": "x"}]

    def task_log_entries(self, dag_id, run_id, task_id, try_number):
        if try_number == 1:
            lines = ["first", "second"] + (["last words of try 1"] if self.round >= 2 else [])
            return [*header(LOCAL, SERVED), *(record(10 + i, line) for i, line in enumerate(lines))]
        return [*header(LOCAL), record(40, "try 2 here")]


def test_a_retry_does_not_swallow_the_end_of_the_try_before_it(monkeypatch, capsys):
    from flexorch_provider.cli import up

    monkeypatch.setattr(up.time, "sleep", lambda s: None)
    assert up._follow_run(RetryingStack(), "d", timeout=60) == "success"
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "    [batch] first",
        "    [batch] second",
        "    [batch] last words of try 1",
        "    [batch try 2] try 2 here",
    ]
