"""LocalBackend: idempotent submit, reattach, logs by cursor, render without side effects."""

from __future__ import annotations

import time
from pathlib import Path

from flexorch_provider.backends.base import JobHandle, JobState, ResolvedJob, run_key
from flexorch_provider.backends.local import LocalBackend, read_log_file
from flexorch_provider.spec import load_spec_text


def make_job(tmp_path: Path, run: str, key: str = "dag/task/run1/-1", **kw) -> ResolvedJob:
    spec = load_spec_text(f"name: t\nkind: batch\nrun: x\nlocal: {{run_dir: '{tmp_path / 'runs'}'}}\n")
    return ResolvedJob(run_key=key, name="t", kind="batch", workload=spec, run=run, **kw)


def wait(backend: LocalBackend, handle: JobHandle, timeout: float = 20) -> JobState:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = backend.poll([handle])[handle.job_id].state
        if state.finished:
            return state
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_submit_twice_while_running_reattaches(tmp_path):
    backend = LocalBackend()
    job = make_job(tmp_path, "echo started >> $HOME_MARK; sleep 2", env={"HOME_MARK": str(tmp_path / "starts")})
    first = backend.submit(job)
    second = backend.submit(job)
    assert first == second
    assert wait(backend, first) == JobState.SUCCEEDED
    assert (tmp_path / "starts").read_text().splitlines() == ["started"]


def test_find_sees_the_live_job_of_a_run_key_and_starts_nothing(tmp_path):
    backend = LocalBackend()
    job = make_job(tmp_path, "sleep 5")
    assert backend.find(job) is None and not (tmp_path / "runs").exists()
    first = backend.submit(job)
    found = backend.find(job)
    assert found is not None and (found.job_id, found.data) == (first.job_id, first.data)
    backend.cancel(first)
    assert wait(backend, first) == JobState.CANCELLED
    assert backend.find(job) is None


def test_a_cancel_right_after_submit_is_handled_by_the_supervisor(tmp_path):
    """submit returns once the supervisor has said it runs, before its signal handlers are in
    place; a cancel at that moment is held until they are, so the supervisor records it itself
    (its note in the log) instead of dying unlogged and leaving cancel() to write a result after
    its grace."""
    backend = LocalBackend()
    for i in range(3):
        handle = backend.submit(make_job(tmp_path, "echo started; sleep 60", key=f"dag/task/quick-cancel-{i}/-1"))
        backend.cancel(handle)
        assert backend.poll([handle])[handle.job_id].state == JobState.CANCELLED
        assert "[flexorch] cancelled (cancelled)" in (Path(handle.data["run_dir"]) / "log").read_text()


def test_submit_goes_through_the_runners_command_and_answers_with_the_status(tmp_path):
    """Local submits as an ssh host does (``jobrunner submit`` with the job on stdin): the answer
    carries the job's first status, so following it needs no second look."""
    handle = LocalBackend().submit(make_job(tmp_path, "sleep 1"))
    assert handle.first_status is not None and handle.first_status.state in (JobState.PENDING, JobState.RUNNING)
    LocalBackend().cancel(handle)


def test_a_run_directory_that_cannot_be_made_refuses_the_submit_and_says_where(tmp_path):
    import pytest

    from flexorch_provider.exceptions import SubmitError

    (tmp_path / "runs").write_text("a file where the runs folder should be")
    with pytest.raises(SubmitError, match=r"cannot create the run directory under .*runs/"):
        LocalBackend().submit(make_job(tmp_path, "true"))


def test_finished_job_is_not_reattached(tmp_path):
    backend = LocalBackend()
    job = make_job(tmp_path, "exit 3")
    first = backend.submit(job)
    assert wait(backend, first) == JobState.FAILED
    assert backend.poll([first])[first.job_id].exit_code == 3
    second = backend.submit(job)
    assert second.job_id != first.job_id and second.job_id.endswith("/2")


def test_poll_many_and_logs_by_cursor(tmp_path):
    backend = LocalBackend()
    handles = [backend.submit(make_job(tmp_path, f"echo job {i}; echo second", key=f"d/t/r/{i}")) for i in range(3)]
    for h in handles:
        wait(backend, h)
    statuses = backend.poll(handles)
    assert {s.state for s in statuses.values()} == {JobState.SUCCEEDED}
    chunk = backend.read_logs(handles[1], 0)
    assert chunk.lines[:2] == ["job 1", "second"]
    again = backend.read_logs(handles[1], chunk.cursor)
    assert again.lines == [] and again.cursor == chunk.cursor


def test_partial_lines_wait_for_newline(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"full line\npartial")
    chunk = read_log_file(tmp_path, 0)
    assert chunk.lines == ["full line"] and chunk.cursor == len(b"full line\n")
    log.write_bytes(b"full line\npartial rest\n")
    assert read_log_file(tmp_path, chunk.cursor).lines == ["partial rest"]


def test_cancel_stops_the_job(tmp_path):
    backend = LocalBackend()
    handle = backend.submit(make_job(tmp_path, "sleep 60"))
    time.sleep(0.3)
    backend.cancel(handle)
    status = backend.poll([handle])[handle.job_id]
    assert status.state == JobState.CANCELLED


def test_render_has_no_side_effects_and_hides_secret_values(tmp_path):
    job = make_job(tmp_path, "echo hi", secrets={"TOKEN": "super-secret-value"})
    text = LocalBackend().render(job)
    assert "echo hi" in text and "TOKEN" in text and "super-secret-value" not in text
    assert not (tmp_path / "runs").exists()


def test_run_key_slug_is_safe_and_unique():
    a = make_job(Path("/x"), "x", key=run_key("My DAG", "t/1", "manual__2025", 0)).key_slug
    b = make_job(Path("/x"), "x", key=run_key("My DAG", "t/1", "manual__2025", 1)).key_slug
    assert a != b
    assert all(c.isalnum() or c == "-" for c in a)


def test_complete_lines_wait_for_a_newline_and_split_a_huge_line():
    from flexorch_provider.backends.base import complete_lines

    assert complete_lines(b"a\nb\npart", 10) == complete_lines(b"a\nb\n", 10)
    assert complete_lines(b"a\nb\npart", 10).lines == ["a", "b"] and complete_lines(b"a\nb\npart", 10).cursor == 14
    assert complete_lines(b"partial", 3).cursor == 3
    huge = complete_lines(b"x" * 100, 0, limit=40)
    assert huge.lines == ["x" * 40] and huge.cursor == 40


def test_a_job_that_asks_for_no_gpus_sees_none(tmp_path):
    backend = LocalBackend()
    handle = backend.submit(
        make_job(tmp_path, 'echo "[${CUDA_VISIBLE_DEVICES-unset}][${NVIDIA_VISIBLE_DEVICES-unset}]"')
    )
    assert wait(backend, handle) == JobState.SUCCEEDED
    assert backend.read_logs(handle, 0).lines[0] == "[][void]"


def test_a_kubernetes_pod_without_gpus_is_told_none_and_one_with_gpus_is_left_to_the_device_plugin():
    from flexorch_provider.backends.kubernetes.manifests import job_manifests
    from flexorch_provider.resolve import load_workload

    def env_of(resources):
        w = load_workload({"name": "k", "kind": "batch", "target": "kubernetes", "image": "cuda:12", "run": "x",
                           "resources": resources})  # fmt: skip
        job = next(d for d in job_manifests(ResolvedJob.for_run(w, "d/t/r/-1")) if d["kind"] == "Job")
        return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env_of({})["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of({"gpus": 1})
