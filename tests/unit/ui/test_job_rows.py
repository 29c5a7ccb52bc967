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


def test_an_undeployed_service_desires_nothing(tmp_path, monkeypatch):
    """An undeployed service was shown "0 / 0 / 2" in warning colours: its spec's replicas, as if
    two were missing. Undeployed, it desires none (and says so)."""
    from flexorch_provider.resolve import load_workload
    from flexorch_provider.services.state import ServiceState
    from flexorch_provider.ui import overview
    from flexorch_provider.ui.cache import Reading

    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path))
    w = load_workload({"name": "web", "kind": "service", "target": "local", "run": "x", "replicas": 2})
    monkeypatch.setattr(overview, "_service_jobs", lambda dag_ids: [("web", w)])
    asked: list[str] = []

    def reading(w):
        asked.append(w.name)
        return Reading({"running": 0, "healthy": 0}, at=0.0)

    monkeypatch.setattr(overview, "_service_reading", reading)
    (row,) = overview.services(None)
    assert (row["deployed"], row["desired"]) == (False, 0)
    # nor is its target asked: a demo service whose DAG waits for a missing connection showed a red error
    assert asked == [] and "error" not in row["reading"] and row["reading"]["note"].startswith("not deployed")
    state = ServiceState.load("web")
    state.mark(True, None, "local")
    state.save()
    (row,) = overview.services(None)
    assert (row["deployed"], row["desired"], asked) == (True, 2, ["web"])


def test_a_recovered_jobs_row_says_its_restarts_and_their_cause():
    from flexorch_provider.records import JobRecord
    from flexorch_provider.ui.overview import _job_row
    from flexorch_provider.ui.page import PAGE

    class Ti:
        dag_id, run_id, task_id, map_index, operator, pool, pool_slots, try_number = "d", "r", "t", -1, "X", None, 1, 1
        state, end_date = "running", None

    record = JobRecord.from_dict({"target": "kubernetes", "job_id": "j-2", "submitted_at": 100.0, "restarts": 2,
                                  "restart_cause": "evicted"})  # fmt: skip
    row = _job_row(Ti(), record, 1000.0)
    assert (row["restarts"], row["restart_cause"]) == (2, "evicted")
    fresh = _job_row(Ti(), JobRecord.from_dict({"target": "local", "job_id": "j/1", "submitted_at": 1.0}), 2.0)
    assert (fresh["restarts"], fresh["restart_cause"]) == (0, None)
    assert "function restarts(j)" in PAGE and PAGE.count("restarts(j)") == 3  # defined; the table and the job view
