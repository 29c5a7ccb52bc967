"""Choosing among targets (target_policy, max_pending): the fit rule, the order, the spec rules,
the pending event, and the operator's move with stand-in backends (its own logic under test;
tests/integration/test_target_choice.py runs it on the real Slurm and ssh fleet)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from flexorch_provider.backends.base import Backend, JobHandle, JobState, JobStatus, LogChunk
from flexorch_provider.exceptions import SpecError
from flexorch_provider.follower import Follower
from flexorch_provider.inventory.model import Gpu, Node, PoolInventory
from flexorch_provider.placement import capacity as placement
from flexorch_provider.placement.choice import Choice, Seen
from flexorch_provider.records import JobRecord
from flexorch_provider.resolve import load_workload


def _node(name: str, model: str, total: int, busy: int = 0, state: str = "up", mib: int | None = None) -> Node:
    gpus = [Gpu(i, model, memory_total=mib, memory_used=0 if mib else None, busy=i < busy) for i in range(total)]
    return Node(name, gpus, state=state, detail="" if state == "up" else "connection refused")


def _want(gpus, nodes: int = 1):
    targets = {"target": ["slurm", "ssh"]} if nodes == 1 else {"target": ["slurm", "kubernetes"], "image": "x:1"}
    return placement.request(load_workload({"name": "j", "kind": "training", "run": "x", **targets,
                                            "resources": {"gpus": gpus, "nodes": nodes}}))  # fmt: skip


def test_a_target_fits_when_enough_nodes_each_have_the_gpus_free_now():
    inv = PoolInventory("slurm", "slurm", [_node("n1", "A100", 4, busy=3), _node("n2", "A100", 4, busy=1)])
    seen = placement.judge("slurm", inv, _want("A100:2"))
    assert seen.fits and (seen.free, seen.total) == (4, 8) and seen.detail.endswith("per node on 1 node: n2")
    assert placement.judge("slurm", inv, _want("A100:2", nodes=2)).fits is False  # n1 has one free
    assert placement.judge("slurm", inv, _want("A100:4")).fits is False
    assert placement.judge("slurm", inv, _want("L4:1")).fits is False  # no L4 at all
    assert placement.judge("slurm", inv, _want("L4:1")).detail.startswith("0 of 0 L4s free; needs 1 per node")
    assert placement.judge("slurm", inv, _want(1)).detail.startswith("4 of 8 GPUs free (A100 ×8)")


def test_memory_down_nodes_and_every_node_placement_count():
    big, small = _node("big", "A100", 2, mib=81920), _node("small", "A100", 2, mib=40960)
    assert placement.judge("ssh", PoolInventory("ssh", "ssh", [small]), _want("A100:80GB:1")).fits is False
    assert placement.judge("ssh", PoolInventory("ssh", "ssh", [small, big]), _want("A100:80GB:1")).fits
    down = PoolInventory("ssh", "ssh", [_node("h1", "L4", 2), _node("h2", "L4", 2, state="unreachable")])
    seen = placement.judge("ssh", down, _want(1))
    assert seen.fits and "not usable: h2 unreachable (connection refused)" in seen.detail
    assert placement.judge("ssh", down, _want(1), every_node=True).fits is False  # placement all: every host
    assert placement.judge("ssh", PoolInventory("ssh", "ssh", []), _want(1)).fits is False


def test_order_puts_the_targets_that_fit_first_and_keeps_the_list_order_otherwise():
    targets = ["slurm", "kubernetes", "ssh"]
    seen = [Seen("slurm", False), Seen("kubernetes", None), Seen("ssh", True)]
    assert placement.order(targets, seen) == ["ssh", "slurm", "kubernetes"]
    assert placement.order(targets, [Seen(t, None) for t in targets]) == targets
    assert placement.order(targets, [Seen(t, False) for t in targets]) == targets


def test_a_job_without_gpus_has_nothing_to_measure():
    w = load_workload({"name": "j", "kind": "batch", "run": "x", "target": ["slurm", "ssh"],
                       "target_policy": "first-free"})  # fmt: skip
    assert placement.capacity(w, "slurm") == Seen("slurm", None, detail="the job asks for no GPUs")


def test_hosts_that_cannot_be_reached_have_no_room_and_an_unreadable_cluster_is_unknown():
    w = load_workload({"name": "j", "kind": "batch", "run": "x", "target": ["slurm", "ssh"], "resources": {"gpus": 1},
                       "ssh": {"connection": "flexorch_no_such_connection", "hosts": ["h1"]},
                       "slurm": {"connection": "flexorch_no_such_connection"}})  # fmt: skip
    ssh = placement.capacity(w, "ssh")
    assert ssh.fits is False and "h1 unreachable" in ssh.detail and "flexorch_no_such_connection" in ssh.detail
    slurm = placement.capacity(w, "slurm")
    assert slurm.fits is None and slurm.detail.startswith("cannot read its GPUs: ")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"target": "slurm", "max_pending": "10m"}, "add a second target"),
        ({"target": ["slurm", "ssh"], "max_pending": 0}, "at least 1s"),
        ({"target": ["slurm", "ssh"], "target_policy": "first-fre"}, "did you mean 'first-free'"),
        ({"target": ["slurm", "ssh"], "max_pending": "soon"}, "max_pending"),
    ],
)
def test_spec_rules(extra, message):
    with pytest.raises(SpecError, match=message):
        load_workload({"name": "j", "kind": "batch", "run": "x", **extra})


def test_services_keep_their_first_target():
    spec = {"name": "web", "kind": "service", "run": "x", "target": ["ssh", "local"], "port": 8080,
            "ssh": {"hosts": ["h1"]}}  # fmt: skip
    with pytest.raises(SpecError, match="target_policy: a service runs on the first target"):
        load_workload({**spec, "target_policy": "first-free"})
    with pytest.raises(SpecError, match="max_pending: a service"):
        load_workload({**spec, "max_pending": "5m"})


# --- the operator's move, with stand-in targets ------------------------------------------------
class Queue(Backend):
    """A target whose jobs stay pending (or have run after ``start_after`` polls), and that records
    what was submitted, withdrawn and cancelled."""

    def __init__(self, name: str, start_after: int | None = None, refuse: bool = False) -> None:
        self.name = name  # type: ignore[misc]
        self.start_after, self.refuse = start_after, refuse
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.polls = 0
        self.live: JobHandle | None = None

    def render(self, job):  # pragma: no cover - not used
        return ""

    def submit(self, job):
        from flexorch_provider.exceptions import SubmitError

        if self.refuse:
            raise SubmitError(f"{self.name} is closed")
        self.submitted.append(job.run_key)
        self.live = JobHandle(self.name, f"{self.name}-{len(self.submitted)}", job.run_key)
        return self.live

    def find(self, job):
        return self.live if self.live is not None and self.live.run_key == job.run_key else None

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        self.polls += 1
        if self.start_after is not None and self.polls > self.start_after:  # it ran, and has ended
            return {h.job_id: JobStatus(JobState.SUCCEEDED, exit_code=0) for h in handles}
        return {h.job_id: JobStatus(JobState.PENDING, message="pending (Resources)") for h in handles}

    def read_logs(self, handle, cursor):
        return LogChunk([], cursor)

    def cancel(self, handle):
        self.cancelled.append(handle.job_id)
        self.live = None


class FakeTi:
    dag_id, task_id, run_id, map_index, try_number = "d", "t", "r", -1, 1

    def __init__(self) -> None:
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


@pytest.fixture
def targets(monkeypatch):
    backends = {"slurm": Queue("slurm"), "ssh": Queue("ssh", start_after=0)}
    monkeypatch.setattr("flexorch_provider.operators.flex.get_backend", lambda t: backends[t])
    monkeypatch.setattr("flexorch_provider.placement.placer.get_backend", lambda t: backends[t])
    monkeypatch.setattr("flexorch_provider.operators.flex.links.job_url", lambda *a, **k: "")
    monkeypatch.setattr("flexorch_provider.operators.flex.links.push", lambda *a, **k: None)
    monkeypatch.setattr("flexorch_provider.operators.flex.masker_for", lambda refs: None)
    return backends


def _operator(**extra):
    from flexorch_provider.operators.flex import FlexOperator

    spec = {"name": "j", "kind": "training", "run": "x", "target": ["slurm", "ssh"], "resources": {"gpus": 1},
            "max_pending": 1, **extra}  # fmt: skip
    return FlexOperator(task_id="t", spec=spec, deferrable=False, poll_interval=0.05)


def _survey(fits: dict[str, bool | None]):
    return lambda w, ts: [Seen(t, fits[t], detail="stand-in") for t in ts]


def test_a_job_pending_past_max_pending_moves_to_a_target_with_room_and_never_back(targets, monkeypatch):
    monkeypatch.setattr(placement, "survey", _survey({"slurm": False, "ssh": True}))
    ti = FakeTi()
    out = _operator().execute({"ti": ti})
    assert out["target"] == "ssh" and out["state"] == "succeeded"
    assert targets["slurm"].cancelled == ["slurm-1"] and len(targets["ssh"].submitted) == 1
    choice = ti.xcom["job"]["choice"]
    (move,) = choice["moves"]
    assert (move["from"], move["job_id"], move["to"]) == ("slurm", "slurm-1", "ssh")
    assert move["reason"] == "pending (Resources)"
    assert choice["chosen"] == "ssh"


def test_with_no_room_elsewhere_it_keeps_its_place_and_says_so(targets, monkeypatch):
    monkeypatch.setattr(placement, "survey", _survey({"slurm": False, "ssh": False}))
    targets["slurm"].start_after = 40  # starts once it has waited past max_pending once
    ti = FakeTi()
    out = _operator().execute({"ti": ti})
    assert out["target"] == "slurm" and targets["slurm"].cancelled == [] and targets["ssh"].submitted == []
    stays = ti.xcom["job"]["choice"]["stays"]
    assert stays and stays[0]["on"] == "slurm" and stays[0]["reason"] == "pending (Resources)"


def test_a_job_that_started_before_the_move_stays(targets, monkeypatch):
    monkeypatch.setattr(placement, "survey", _survey({"slurm": False, "ssh": True}))
    slurm = targets["slurm"]
    monkeypatch.setattr(slurm, "withdraw", lambda handle: False)  # it started as the move began
    slurm.start_after = 10**6
    calls = {"n": 0}
    real_poll = slurm.poll

    def poll(handles):
        calls["n"] += 1
        if calls["n"] > 40:
            slurm.start_after = 0
            return {h.job_id: JobStatus(JobState.SUCCEEDED, exit_code=0) for h in handles}
        return real_poll(handles)

    monkeypatch.setattr(slurm, "poll", poll)
    out = _operator().execute({"ti": FakeTi()})
    assert out["target"] == "slurm" and targets["ssh"].submitted == [] and slurm.cancelled == []


def test_first_free_submits_where_the_gpus_are_free_and_logs_what_it_saw(targets, monkeypatch):
    monkeypatch.setattr(placement, "survey", _survey({"slurm": False, "ssh": True}))
    ti = FakeTi()
    out = _operator(target_policy="first-free", max_pending=None).execute({"ti": ti})
    assert out["target"] == "ssh" and targets["slurm"].submitted == []
    choice = ti.xcom["job"]["choice"]
    assert choice["policy"] == "first-free" and choice["chosen"] == "ssh"
    assert [(s["target"], s["fits"]) for s in choice["seen"]] == [("slurm", False), ("ssh", True)]


def test_a_restarted_task_finds_its_job_on_whichever_target_it_went_to(targets, monkeypatch):
    monkeypatch.setattr(placement, "survey", _survey({"slurm": True, "ssh": True}))
    targets["ssh"].live = JobHandle("ssh", "ssh-earlier", "d/t/r/-1")  # moved there before the restart
    out = _operator().execute({"ti": FakeTi()})
    assert out["job_id"] == "ssh-earlier" and targets["slurm"].submitted == [] and targets["ssh"].submitted == []


def test_two_live_jobs_of_one_run_keep_the_one_that_runs(targets, monkeypatch):
    monkeypatch.setattr(placement, "survey", _survey({"slurm": False, "ssh": True}))
    targets["slurm"].live = JobHandle("slurm", "slurm-stale", "d/t/r/-1")
    targets["ssh"].live = JobHandle("ssh", "ssh-running", "d/t/r/-1")
    out = _operator().execute({"ti": FakeTi()})
    assert out["job_id"] == "ssh-running" and targets["slurm"].cancelled == ["slurm-stale"]


def test_the_follower_reports_a_job_still_pending_past_its_deadline():
    backend = Queue("slurm")
    handle = JobHandle("slurm", "s-1", "k")
    status = JobStatus(JobState.PENDING, message="pending (Resources)")
    assert Follower(backend, handle, pending_until=time.time() + 60).observe(status).event is None
    event = Follower(backend, handle, pending_until=time.time() - 1).observe(status).event
    assert event is not None and event.status == "pending" and event.message == "pending (Resources)"
    running = JobStatus(JobState.RUNNING)
    assert Follower(backend, handle, pending_until=time.time() - 1).observe(running).event is None


def test_the_page_says_how_the_target_was_chosen_in_one_line():
    from flexorch_provider.ui.overview import _job_row

    def summary(choice: dict) -> str | None:
        parsed = Choice.from_dict(choice)
        assert parsed is not None
        return parsed.summary()

    assert summary({"targets": ["local"], "policy": "first-accepts"}) is None
    first_free = {"targets": ["slurm", "ssh"], "policy": "first-free", "chosen": "ssh",
                  "seen": [{"target": "slurm", "fits": False}, {"target": "ssh", "fits": True}]}  # fmt: skip
    assert summary(first_free) == "first-free: slurm full, ssh fits → ssh"
    moved = {"targets": ["slurm", "ssh"], "policy": "first-accepts", "chosen": "ssh",
             "moves": [{"from": "slurm", "to": "ssh", "waited": "10m00s", "reason": "pending (Resources)"}]}  # fmt: skip
    assert summary(moved) == "moved from slurm after 10m00s (pending (Resources)) → ssh"
    waits = {"targets": ["slurm", "ssh"], "chosen": "slurm", "stays": [{"on": "slurm"}]}
    assert summary(waits) == "waits on slurm: no other target has room → slurm"

    class Ti:
        dag_id, run_id, task_id, map_index, state, operator, pool, pool_slots = (
            "d",
            "r",
            "t",
            -1,
            "deferred",
            "FlexOperator",
            None,
            1,
        )
        try_number, start_date = 1, None

    record = JobRecord.from_dict({"target": "ssh", "job_id": "j/1", "choice": first_free, "submitted_at": 1.0})
    row = _job_row(Ti(), record, 2.0)
    assert row["choice"] == "first-free: slurm full, ssh fits → ssh"
