"""FlexJobTrigger: serialization, events from a real local job, and batched polling."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Sequence

from flexorch_provider.backends.base import Backend, JobHandle, JobState, JobStatus, LogChunk, ResolvedJob
from flexorch_provider.backends.local import LocalBackend
from flexorch_provider.spec import load_spec_text
from flexorch_provider.triggers.batcher import StatusBatcher
from flexorch_provider.triggers.job import FlexJobTrigger


def test_serialize_round_trip():
    handle = JobHandle("local", "k/1", "d/t/r/-1", {"run_dir": "/tmp/x"}).to_dict()
    trigger = FlexJobTrigger(handle=handle, poll_interval=2, log_cursor=10, tail_lines=5)
    path, kwargs = trigger.serialize()
    module, _, name = path.rpartition(".")
    clone = getattr(importlib.import_module(module), name)(**kwargs)
    assert clone.serialize() == trigger.serialize()
    assert JobHandle.from_dict(clone.handle) == JobHandle.from_dict(handle)


def _job(tmp_path, run):
    spec = load_spec_text(f"name: t\nkind: batch\nrun: x\nlocal: {{run_dir: '{tmp_path}'}}\n")
    return ResolvedJob(run_key=f"d/t/{run}/-1", name="t", kind="batch", workload=spec, run=run)


async def _events(trigger):
    return [e async for e in trigger.run()]


def test_events_for_real_local_jobs(tmp_path):
    backend = LocalBackend()
    ok = backend.submit(_job(tmp_path, "echo a; echo b"))
    bad = backend.submit(_job(tmp_path, "echo oops; exit 4"))

    async def both():
        return await asyncio.gather(
            _events(FlexJobTrigger(ok.to_dict(), poll_interval=0.1)),
            _events(FlexJobTrigger(bad.to_dict(), poll_interval=0.1)),
        )

    (ok_event,), (bad_event,) = asyncio.run(both())
    assert ok_event.payload["status"] == "success" and ok_event.payload["exit_code"] == 0
    assert ok_event.payload["log_tail"][:2] == ["a", "b"]
    assert bad_event.payload["status"] == "failed" and bad_event.payload["exit_code"] == 4
    assert "oops" in bad_event.payload["log_tail"]


class CountingBackend(Backend):
    """A backend stand-in that counts poll calls (unit test of the batcher's own logic)."""

    name = "counting"

    def __init__(self, finish_after: int) -> None:
        self.calls = 0
        self.sizes: list[int] = []
        self.finish_after = finish_after

    def render(self, job):
        return ""

    def submit(self, job):
        raise NotImplementedError

    def poll(self, handles: Sequence[JobHandle]):
        self.calls += 1
        self.sizes.append(len(handles))
        state = JobState.SUCCEEDED if self.calls >= self.finish_after else JobState.RUNNING
        return {h.job_id: JobStatus(state, 0) for h in handles}

    def read_logs(self, handle, cursor):
        return LogChunk([], cursor)

    def cancel(self, handle):
        pass


def test_many_watchers_share_one_poll_per_interval():
    backend = CountingBackend(finish_after=3)
    batcher = StatusBatcher()

    async def follow(i: int) -> int:
        handle = JobHandle("counting", f"job-{i}", f"r/{i}")
        rounds = 0
        async with batcher.watch(backend, handle, 0.05) as watch:
            while True:
                rounds += 1
                if (await watch.next()).state.finished:
                    return rounds

    async def main():
        return await asyncio.gather(*(follow(i) for i in range(200)))

    rounds = asyncio.run(main())
    assert backend.calls == 3  # 200 jobs, 3 intervals → 3 polls, not 600
    assert backend.sizes == [200, 200, 200]
    assert set(rounds) == {3}


class LeakyBackend(Backend):
    """A job whose output contains a secret value (unit test of the trigger's masking)."""

    name = "leaky"

    def render(self, job):  # pragma: no cover - not used
        return ""

    def submit(self, job):  # pragma: no cover - not used
        raise NotImplementedError

    def poll(self, handles):
        return {h.job_id: JobStatus(JobState.FAILED, 1, "exit code 1") for h in handles}

    def read_logs(self, handle, cursor):
        if cursor:
            return LogChunk([], cursor)
        return LogChunk(["connecting with s3cr3t-token-value", "auth failed for s3cr3t-token-value"], 1)

    def cancel(self, handle):  # pragma: no cover - not used
        pass


def test_secret_values_in_job_output_are_masked_before_logging_and_in_the_event(monkeypatch):
    import flexorch_provider.resolve as resolve

    monkeypatch.setattr(resolve, "resolve_secret", lambda name, ref: "s3cr3t-token-value")
    handle = JobHandle("leaky", "j1", "d/t/r/-1", secret_refs={"TOKEN": {"source": "variable", "name": "tok"}})
    trigger = FlexJobTrigger(handle.to_dict(), poll_interval=0.01)
    monkeypatch.setattr(trigger, "_backend", lambda: LeakyBackend())
    (event,) = asyncio.run(_events(trigger))
    assert event.payload["status"] == "failed"
    assert event.payload["log_tail"] == ["connecting with ***", "auth failed for ***"]


def test_a_restarted_trigger_resumes_the_log_where_the_previous_one_left_it(tmp_path, monkeypatch, caplog):
    """A triggerer dies mid-job and a new one runs the same trigger kwargs: the lines already in
    the task log are not streamed again, none are lost, and the checkpoint goes when it fires."""
    import json
    import logging

    from flexorch_provider.triggers.checkpoint import LogCheckpoint

    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path / "state"))
    go = tmp_path / "go"
    handle = (
        LocalBackend()
        .submit(_job(tmp_path, f"echo one; echo two; while [ ! -f {go} ]; do sleep 0.05; done; echo three"))
        .to_dict()
    )
    checkpoint = tmp_path / "state" / "log-cursors" / f"{LogCheckpoint(handle).key}.json"  # the default store's file
    caplog.set_level(logging.INFO)

    def trigger():
        t = FlexJobTrigger(handle, poll_interval=0.05)
        t._log = logging.getLogger("flexorch-test-trigger")  # what it logs is what the task log gets
        return t

    async def first_triggerer_dies_after_two():
        task = asyncio.create_task(_events(trigger()))
        for _ in range(200):  # the checkpoint trails the log by one poll: wait until it is past "two"
            await asyncio.sleep(0.05)
            if checkpoint.exists() and json.loads(checkpoint.read_text())["cursor"] == len(b"one\ntwo\n"):
                break
        task.cancel()  # as when the triggerer process dies: no event, no on_kill
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(first_triggerer_dies_after_two())
    assert "two" in caplog.messages
    caplog.clear()
    go.touch()
    (event,) = asyncio.run(_events(trigger()))
    assert event.payload["status"] == "success"
    streamed = [m for m in caplog.messages if m in ("one", "two", "three")]
    assert streamed == ["three"], caplog.messages
    assert not checkpoint.exists()


def test_a_stalled_copy_stops_streaming_once_the_trigger_runs_elsewhere(tmp_path, monkeypatch, caplog):
    """A triggerer stalls past the health threshold: Airflow runs the trigger on another triggerer
    and cancels the first copy only once that one wakes. The new copy claims the log cursor; the old
    one, awake again, streams nothing more (it would log the new copy's lines twice) and fires
    nothing: it waits for its cancel."""
    import logging

    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path / "state"))
    go = tmp_path / "go"
    handle = (
        LocalBackend()
        .submit(_job(tmp_path, f"echo one; while [ ! -f {go} ]; do sleep 0.05; done; echo two; echo three"))
        .to_dict()
    )
    caplog.set_level(logging.INFO)

    def copy(name: str) -> FlexJobTrigger:
        t = FlexJobTrigger(handle, poll_interval=0.05)
        t._log = logging.getLogger(f"flexorch-test-{name}")
        return t

    def said(name: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == f"flexorch-test-{name}"]

    async def moved() -> None:
        old = asyncio.create_task(_events(copy("old")))
        for _ in range(200):
            await asyncio.sleep(0.05)
            if "one" in said("old"):
                break
        await asyncio.sleep(0.2)  # the old copy's checkpoint is past "one"
        new = asyncio.create_task(_events(copy("new")))
        await asyncio.sleep(0.5)  # both run; the old one finds the cursor claimed at its next poll
        go.touch()
        (event,) = await asyncio.wait_for(new, 30)
        assert event.payload["status"] == "success"
        await asyncio.sleep(0.3)
        assert not old.done()  # it fired nothing: it waits to be cancelled
        old.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await old

    asyncio.run(moved())
    assert [m for m in said("new") if m in ("one", "two", "three")] == ["two", "three"]
    old = said("old")
    assert [m for m in old if m in ("one", "two", "three")] == ["one"], old
    assert any("followed by this trigger's copy on another triggerer" in m for m in old), old


def test_a_backend_compares_its_own_cursors():
    furthest = LocalBackend().furthest
    assert furthest(10, 4) == 10 and furthest(4, 10) == 10
    assert furthest(12, {"h1": 3}) == 12  # a cursor of another kind is not this job's


def test_a_handle_from_before_secret_refs_had_their_own_field_still_masks():
    """A trigger serialized by 0.1 (refs inside data) resumes after an upgrade with its refs."""
    old = {"target": "local", "job_id": "k/1", "run_key": "d/t/r/-1",
           "data": {"run_dir": "/x", "secret_refs": {"T": {"source": "variable", "name": "t"}}}}  # fmt: skip
    handle = JobHandle.from_dict(old)
    assert handle.secret_refs == {"T": {"source": "variable", "name": "t"}} and handle.data == {"run_dir": "/x"}
    assert JobHandle.from_dict(handle.to_dict()) == handle


def test_the_final_event_is_held_until_not_before(tmp_path):
    """A job that ends right after its task deferred: the event waits for not_before."""
    import time

    handle = LocalBackend().submit(_job(tmp_path, "true")).to_dict()
    not_before = time.time() + 1.5
    (event,) = asyncio.run(_events(FlexJobTrigger(handle, poll_interval=0.05, not_before=not_before)))
    assert event.payload["status"] == "success" and time.time() >= not_before


def test_following_many_jobs_logs_changes_not_one_line_per_job_per_poll(tmp_path):
    """40 real local jobs followed for ~8 polls each: every job's trigger says once that it runs;
    nothing is logged again while nothing changes (a triggerer with 500 jobs stays readable)."""
    import logging

    backend = LocalBackend()
    handles = [backend.submit(_job(tmp_path, f"sleep 60 # {i}")) for i in range(40)]
    triggers = [FlexJobTrigger(h.to_dict(), poll_interval=0.2) for h in handles]

    async def follow_for(seconds: float) -> None:
        tasks = [asyncio.create_task(_events(t)) for t in triggers]
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    records: list[str] = []

    class Recorder:
        """Each trigger's own log, and every stdlib record at INFO or above (backends, libraries)."""

        def info(self, msg, *args):
            records.append(msg % args if args else msg)

        warning = exception = error = info

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.INFO:
                records.append(record.getMessage())

    for t in triggers:
        t._log = Recorder()
    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        asyncio.run(follow_for(2.0))
    finally:
        logging.getLogger().removeHandler(keep)
        for h in handles:
            backend.cancel(h)
    for h in handles:
        mine = [m for m in records if h.job_id in m]
        assert mine == [f"job {h.job_id} is running"], mine
    assert len(records) == len(handles), records[:20]
