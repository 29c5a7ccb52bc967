"""The service watcher's logic: what counts as needing a change, the restart back-off, which
replicas a step down removes, and the watch DAG each plain-host service gets."""

from __future__ import annotations

from flexorch_provider.dag_factory.plan import plan_dags
from flexorch_provider.services.scaling import scaled_slots
from flexorch_provider.services.state import ServiceState
from flexorch_provider.services.watch import problems
from flexorch_provider.spec.loader import load_spec_text


def replica(slot, healthy=True, age=100.0, detail="ok"):
    return {"slot": slot, "healthy": healthy, "age_s": age, "detail": detail}


def test_problems_are_missing_unhealthy_past_grace_and_unwanted_replicas():
    status = {"replicas": [replica(0), replica(1, healthy=False, age=5), replica(2, healthy=False, detail="503"),
                           replica(7)], "unreachable": {"h3": "connection refused"}}  # fmt: skip
    found = problems(status, [0, 1, 2, 3], grace_s=30)
    assert found == {2: "unhealthy past its 30s grace: 503", 3: "not running (h3 unreachable: connection refused)",
                     7: "not wanted any more"}  # fmt: skip


def test_a_slot_running_twice_at_one_revision_is_a_problem_but_a_rolling_update_is_not():
    """A host that came back still runs the copy the watcher moved away from it: two copies of one
    slot, same revision, on two hosts; the watcher's converge removes one at once (it used to wait
    for the 5-minute reconcile). A rolling update's two copies differ in revision."""

    def on(host, revision):
        return {**replica(0), "host": host, "revision": revision}

    doubled = problems({"replicas": [on("gpu-2", "r1"), on("gpu-1", "r1")]}, [0], grace_s=30)
    assert doubled == {0: "running twice, on gpu-1 and gpu-2: a host that came back still ran the copy moved "
                          "away from it"}  # fmt: skip
    assert problems({"replicas": [on("gpu-1", "r1"), on("gpu-2", "r2")]}, [0], grace_s=30) == {}


def test_a_crash_looping_replica_is_restarted_at_growing_intervals(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path))
    s = ServiceState("web", deployed=True)
    assert s.next_restart(1, 1000) == (1000, 0)
    s.restarted(1, 1000)
    assert s.next_restart(1, 1001) == (1005, 1)  # it died again: 5 s after its last restart
    s.restarted(1, 1005)
    assert s.next_restart(1, 1006) == (1015, 2)  # then 10 s, 20 s ... up to 5 min
    s.restarted(1, 1015)
    assert s.next_restart(1, 1016) == (1035, 3)
    for t in range(10):
        s.restarted(1, 1040 + t)
    assert s.next_restart(1, 1050)[0] == 1049 + 300
    assert s.next_restart(1, 1049 + 601) == (1650, 0)  # quiet for 10 min: forgiven
    s.save()
    again = ServiceState.load("web")
    assert again.deployed and again.restarts == s.restarts


def test_a_step_down_drops_the_least_loaded_replicas_and_a_step_up_adds_free_numbers():
    assert scaled_slots([0, 1, 2], 2, {0: 0.0, 1: 5.0, 2: 3.0}) == [1, 2]
    assert scaled_slots([0, 1, 2], 1, {0: 4.0, 2: 1.0}) == [1]  # unknown load counts as busy
    assert scaled_slots([1, 2], 4, {}) == [0, 1, 2, 3]
    assert scaled_slots([0], 1, {}) == [0]


def test_each_plain_host_service_gets_a_continuous_watch_dag():
    spec = load_spec_text("name: web\nkind: service\ntarget: ssh\nrun: serve\nreplicas: 2\n", "web.yaml")
    plans = {p.dag_id: p for p in plan_dags(spec, "web.yaml")}
    watch = plans["web-watch"]
    assert watch.schedule == "@continuous" and watch.dag_kwargs()["max_active_runs"] == 1
    assert watch.start_date is not None and [t.action for t in watch.tasks] == ["watch"]
    k8s = load_spec_text("name: api\nkind: service\ntarget: kubernetes\nimage: x\nrun: serve\n", "api.yaml")
    assert "api-watch" not in {p.dag_id for p in plan_dags(k8s, "api.yaml")}  # it heals itself
    scaled = load_spec_text(
        "name: api\nkind: service\ntarget: kubernetes\nimage: x\nrun: serve\nautoscale: {max: 3, target: 5, "
        "metric: {source: prometheus, connection: prom, query: 'sum(inflight)'}}\n", "api.yaml")  # fmt: skip
    assert "api-watch" in {p.dag_id for p in plan_dags(scaled, "api.yaml")}


def test_watch_false_leaves_healing_to_the_reconcile_schedule():
    spec = load_spec_text("name: web\nkind: service\ntarget: ssh\nrun: serve\nwatch: false\n", "web.yaml")
    assert {p.dag_id for p in plan_dags(spec, "web.yaml")} == {"web", "web-reconcile"}
