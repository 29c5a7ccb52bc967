"""A job's row as the flexorch page shows it."""

from __future__ import annotations


def test_an_ended_jobs_elapsed_time_stops_at_its_end():
    """The page's "elapsed" of an ended job kept counting."""
    import datetime as dt

    from flexorch_provider.records import JobRecord
    from flexorch_provider.ui.overview import _job_row

    class Ti:
        dag_id, run_id, task_id, map_index, operator, pool, pool_slots, try_number = "d", "r", "t", -1, "X", None, 1, 1

        def __init__(self, state, end):
            self.state, self.end_date = state, end

    record = JobRecord.from_dict({"target": "local", "job_id": "j/1", "submitted_at": 100.0})
    ended = Ti("success", dt.datetime.fromtimestamp(130.0, dt.UTC))
    assert _job_row(ended, record, 1000.0)["elapsed_s"] == 30.0
    assert _job_row(Ti("running", None), record, 1000.0)["elapsed_s"] == 900.0
