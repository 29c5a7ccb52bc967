"""The kubernetes target against the kmock API emulator (tests/integration/kube.py) with
the test playing the controllers — no real cluster is available to the test suite.

Every object the backend sends is validated with kubernetes-validate (strict) for
Kubernetes 1.32-1.37, plus the server-side rules the schema does not express."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from dataclasses import replace

import kubernetes_validate
import pytest

from flexorch_provider.backends import kubernetes as k8s
from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.exceptions import ServiceError, SubmitError
from flexorch_provider.resolve import load_workload
from tests.conftest import KUBE_CONN
from tests.gitrepo import git_repo
from tests.integration.follow import wait_finished
from tests.integration.kube import Behaviour

BACKEND = k8s.KubernetesBackend()
VERSIONS = ("1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_n = iter(range(1_000_000))


def check_manifest(obj):
    """Strict schema for every version, then what only an API server would reject."""
    for version in VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)
    meta = obj["metadata"]
    assert DNS_1123_LABEL.match(meta["name"]), meta["name"]
    for key, value in meta.get("labels", {}).items():
        assert len(value) <= 63 and re.match(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]?$", value), (key, value)
    if obj["kind"] in ("Job", "Deployment"):
        pod = obj["spec"]["template"]["spec"]
        if obj["kind"] == "Job":
            assert pod["restartPolicy"] in ("Never", "OnFailure")
        else:
            assert pod.get("restartPolicy", "Always") == "Always"
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        for c in pod["containers"]:
            for section in ("requests", "limits"):
                gpus = c.get("resources", {}).get(section, {}).get("nvidia.com/gpu")
                assert gpus is None or isinstance(gpus, int)


@pytest.fixture
def sent(monkeypatch):
    """Every object the backend creates or replaces, validated after the test."""
    objects = []
    real_create, real_replace = k8s.Api.create, k8s.Api.replace

    def create(self, obj):
        objects.append(obj)
        return real_create(self, obj)

    def replace(self, obj):
        objects.append(obj)
        return real_replace(self, obj)

    monkeypatch.setattr(k8s.Api, "create", create)
    monkeypatch.setattr(k8s.Api, "replace", replace)
    yield objects
    for obj in objects:
        check_manifest(obj)


def make_job(name, run="python -m task", *, kind="batch", action=None, secrets=None, **fields):
    spec = {"name": name, "kind": kind, "target": "kubernetes", "image": "ghcr.io/acme/task:1.0", "run": run,
            "kubernetes": {"connection": KUBE_CONN, "namespace": "ml"}, **fields}  # fmt: skip
    w = load_workload(spec)
    return ResolvedJob(run_key=f"{name}/task/run-{next(_n)}-{time.time_ns()}/-1", name=name, kind=kind, workload=w,
                       run=w.run, env=dict(w.env), secrets=secrets or {}, action=action)  # fmt: skip


def wait(handle, timeout=20, seen=None):
    return wait_finished(BACKEND, handle, timeout, 0.1, seen)


def test_a_job_runs_to_success_with_its_log(kube_cluster, sent):
    kube_cluster.behaviours["ok-job"] = Behaviour(log=["loading", "score=0.93"], exit_code=0)
    handle = BACKEND.submit(make_job("ok-job", resources={"gpus": "A100:2", "cpus": 4, "memory": "16Gi"}))
    status = wait(handle)
    assert status.state == JobState.SUCCEEDED and status.exit_code == 0
    assert BACKEND.read_logs(handle, 0).lines == ["loading", "score=0.93"]
    (job,) = [o for o in sent if o["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}


def test_a_growing_log_is_read_by_time_after_the_first_read(kube_cluster, sent):
    """After one whole read, each poll asks only for lines since the last one's second (sinceTime),
    and lines that share a timestamp with lines already read still come exactly once."""
    from flexorch_provider.backends.kubernetes import logs

    lines = ["epoch 1"]
    kube_cluster.behaviours["grow-job"] = Behaviour(log=lines, exit_code=None)
    handle = BACKEND.submit(make_job("grow-job"))

    def read_until(cursor, want, timeout=10):
        got, deadline = [], time.time() + timeout
        while len(got) < want and time.time() < deadline:
            chunk = BACKEND.read_logs(handle, cursor)
            got, cursor = got + chunk.lines, chunk.cursor
            time.sleep(0.1)
        return got, cursor

    try:
        first, cursor = read_until(0, 1)
        assert first == ["epoch 1"] and cursor == len(b"epoch 1\n")
        queries = len(kube_cluster.log_queries)
        soon = time.gmtime(time.time() + 2)
        kube_cluster.fixed_stamp = time.strftime("%Y-%m-%dT%H:%M:%S.5Z", soon)  # several lines in one instant
        lines += ["epoch 2", "epoch 3"]
        more, cursor = read_until(cursor, 2)
        lines.append("epoch 4")  # the same instant as the two before: only it is new
        last, cursor = read_until(cursor, 1)
        assert more == ["epoch 2", "epoch 3"] and last == ["epoch 4"]
        assert BACKEND.read_logs(handle, cursor).lines == []
        assert cursor == len("".join(f"epoch {i}\n" for i in range(1, 5)).encode())  # bytes of the lines alone
        later = kube_cluster.log_queries[queries:]
        assert later and all(q.get("sinceTime") for q in later), later  # never the whole log again
        assert all(q["timestamps"] == "true" for q in kube_cluster.log_queries)
        # a process that has not read this log (a restarted triggerer) reads it whole once
        logs.LOG_MARKS.clear()
        assert BACKEND.read_logs(handle, len(b"epoch 1\n")).lines == ["epoch 2", "epoch 3", "epoch 4"]
        assert "sinceTime" not in kube_cluster.log_queries[-1]
    finally:
        kube_cluster.fixed_stamp = None
        BACKEND.cancel(handle)


def test_failure_carries_the_exit_code_and_the_log_is_still_readable(kube_cluster, sent):
    kube_cluster.behaviours["bad-job"] = Behaviour(log=["Traceback...", "KeyError: 'x'"], exit_code=3)
    handle = BACKEND.submit(make_job("bad-job"))
    status = wait(handle)
    assert status.state == JobState.FAILED and status.exit_code == 3 and "exit code 3" in status.message
    assert BACKEND.read_logs(handle, 0).lines[-1] == "KeyError: 'x'"


def test_oom_and_a_bad_image_become_clear_errors(kube_cluster, sent):
    kube_cluster.behaviours["oom-job"] = Behaviour(oom=True)
    status = wait(BACKEND.submit(make_job("oom-job")))
    assert status.state == JobState.FAILED and status.message.startswith("OOMKilled")

    kube_cluster.behaviours["pull-job"] = Behaviour(waiting_reason="ImagePullBackOff")
    handle = BACKEND.submit(make_job("pull-job"))
    status = wait(handle)
    assert status.state == JobState.FAILED and "ImagePullBackOff" in status.message
    assert status.message.endswith("(image x)")
    # poll only reports; the Job's owner cancels it (or resubmits its run key): nothing is left behind
    BACKEND.cancel(handle)
    assert BACKEND.poll([handle])[handle.job_id].state == JobState.LOST


def test_poll_leaves_a_job_that_can_never_start_and_a_retry_replaces_it(kube_cluster, sent):
    kube_cluster.behaviours["stuck-job"] = Behaviour(waiting_reason="ErrImagePull")
    job = make_job("stuck-job")
    first = BACKEND.submit(job)
    assert wait(first).state == JobState.FAILED
    assert BACKEND.poll([first])[first.job_id].state == JobState.FAILED  # reported again: poll deleted nothing
    assert first.job_id in [j.metadata.name for j in kube_cluster.batch.list_namespaced_job("ml").items]
    again = BACKEND.submit(job)  # the retry does not reattach to an attempt that can never start
    names = [j.metadata.name for j in kube_cluster.batch.list_namespaced_job("ml").items]
    assert again.job_id != first.job_id and again.job_id in names and first.job_id not in names
    BACKEND.cancel(again)


def test_unschedulable_shows_the_schedulers_message_while_pending(kube_cluster, sent):
    why = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    kube_cluster.behaviours["big-job"] = Behaviour(unschedulable=why)
    handle = BACKEND.submit(make_job("big-job", resources={"gpus": 8}))
    deadline = time.time() + 10
    status = BACKEND.poll([handle])[handle.job_id]
    while "Unschedulable" not in status.message and time.time() < deadline:
        time.sleep(0.1)
        status = BACKEND.poll([handle])[handle.job_id]
    assert status.state == JobState.PENDING and status.message == f"Unschedulable: {why}"
    BACKEND.cancel(handle)


def test_kill_deletes_the_job_and_its_secret_and_reattach_finds_a_live_job(kube_cluster, sent):
    kube_cluster.behaviours["long-job"] = Behaviour(exit_code=None, log=["working"])
    job = make_job("long-job", secrets={"TOKEN": "tok-123456"})
    job.workload.secrets = load_workload(  # the spec declares the secret; its value was resolved from Airflow
        {"name": "x", "kind": "batch", "run": "x", "secrets": {"TOKEN": "variable:token"}}
    ).secrets
    assert BACKEND.find(job) is None
    first = BACKEND.submit(job)
    assert BACKEND.submit(job).job_id == first.job_id  # reattached, no second Job
    found = BACKEND.find(job)  # what a task whose job may have moved asks every target
    assert found is not None and found.job_id == first.job_id and found.data == first.data
    jobs = kube_cluster.batch.list_namespaced_job("ml").items
    assert [j.metadata.name for j in jobs if j.metadata.name.startswith(job.key_slug)] == [first.job_id]
    secret = next(o for o in sent if o["kind"] == "Secret")
    env = next(o for o in sent if o["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert secret["stringData"] == {"TOKEN": "tok-123456"}
    assert "tok-123456" not in str(env) and {"name": "TOKEN", "valueFrom": {"secretKeyRef": {
        "name": secret["metadata"]["name"], "key": "TOKEN"}}} in env  # fmt: skip
    wait_running = time.time() + 10
    while BACKEND.poll([first])[first.job_id].state != JobState.RUNNING and time.time() < wait_running:
        time.sleep(0.1)
    BACKEND.cancel(first)
    assert first.job_id not in [j.metadata.name for j in kube_cluster.batch.list_namespaced_job("ml").items]
    assert secret["metadata"]["name"] not in [
        s.metadata.name for s in kube_cluster.core.list_namespaced_secret("ml").items
    ]
    assert BACKEND.poll([first])[first.job_id].state == JobState.LOST
    assert BACKEND.find(job) is None
    again = BACKEND.submit(job)  # after a kill, a retry creates the next attempt
    assert again.job_id != first.job_id and again.job_id.startswith(job.key_slug)
    BACKEND.cancel(again)


def test_polling_many_jobs_costs_two_list_calls(kube_cluster, sent, monkeypatch):
    kube_cluster.behaviours["many"] = Behaviour(exit_code=None)
    handles = [BACKEND.submit(make_job("many")) for _ in range(8)]
    calls = []
    from kubernetes.client import BatchV1Api, CoreV1Api

    for cls, name in ((BatchV1Api, "list_namespaced_job"), (CoreV1Api, "list_namespaced_pod")):
        real = getattr(cls, name)

        def counting(self, *a, _real=real, _name=name, **kw):
            calls.append(_name)
            return _real(self, *a, **kw)

        monkeypatch.setattr(cls, name, counting)
    assert set(BACKEND.poll(handles)) == {h.job_id for h in handles}
    assert sorted(calls) == ["list_namespaced_job", "list_namespaced_pod"]
    for h in handles:
        BACKEND.cancel(h)


def test_multi_node_is_an_indexed_job_with_a_headless_service(kube_cluster, sent):
    kube_cluster.behaviours["ddp"] = Behaviour(exit_code=0)
    handle = BACKEND.submit(make_job("ddp", kind="training", resources={"nodes": 3, "gpus": 8}))
    assert wait(handle).state == JobState.SUCCEEDED
    job = next(o for o in sent if o["kind"] == "Job")
    svc = next(o for o in sent if o["kind"] == "Service")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    assert (
        svc["spec"]["clusterIP"] == "None" and job["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"]
    )
    entries = job["spec"]["template"]["spec"]["containers"][0]["env"]
    env = {e["name"]: e.get("value") for e in entries}
    name, sub = job["metadata"]["name"], svc["metadata"]["name"]
    assert env["FLEXORCH_NNODES"] == "3" and env["FLEXORCH_MASTER_ADDR"] == f"{name}-0.{sub}"
    assert env["FLEXORCH_NODE_ADDRS"] == ",".join(f"{name}-{i}.{sub}" for i in range(3))
    assert env["FLEXORCH_GPUS_PER_NODE"] == "8" and env["FLEXORCH_MASTER_PORT"] == "29500"
    rank = next(e for e in entries if e["name"] == "FLEXORCH_NODE_RANK")["valueFrom"]["fieldRef"]["fieldPath"]
    assert rank == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # torchrun's names copy them (Kubernetes expands $(VAR) of earlier entries); nothing counts processes
    assert env["PET_NODE_RANK"] == "$(FLEXORCH_NODE_RANK)" and env["PET_MASTER_ADDR"] == "$(FLEXORCH_MASTER_ADDR)"
    names = [e["name"] for e in entries]
    assert names.index("FLEXORCH_NODE_RANK") < names.index("PET_NODE_RANK") and "WORLD_SIZE" not in env


SERVICE = {"replicas": 2, "port": 8000, "health": {"http": "/healthz", "interval": "5s", "grace": "30s"},
           "update": {"strategy": "rolling", "max_surge": 1, "max_unavailable": 0}}  # fmt: skip


def test_service_deploy_waits_for_the_rollout_then_undeploy_removes_it(kube_cluster, sent):
    kube_cluster.behaviours["chat"] = Behaviour()
    lines: list[str] = []
    out = BACKEND.service(make_job("chat", kind="service", action="deploy", **SERVICE), lines.append)
    assert out["replicas"] == 2 and any("2/2 available" in line for line in lines)
    dep = next(o for o in sent if o["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    assert c["livenessProbe"]["initialDelaySeconds"] == 30
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    # a second deploy with a change waits for the new generation, not the old (complete) status
    import threading

    lines.clear()
    kube_cluster.behaviours["chat"] = Behaviour(hold=True)
    update = make_job("chat", kind="service", action="deploy", env={"MODE": "v2"}, **SERVICE)
    worker = threading.Thread(target=BACKEND.service, args=(update, lines.append))
    worker.start()
    worker.join(2.0)
    assert worker.is_alive(), f"the deploy returned before the controller saw the change: {lines}"
    kube_cluster.behaviours["chat"] = Behaviour()
    worker.join(20)
    assert lines[0] == "Deployment chat: updated" and "2/2 replicas available at revision" in lines[-1]
    out = BACKEND.service(make_job("chat", kind="service", action="undeploy", **SERVICE), lines.append)
    assert out["deleted"] == ["Deployment", "Service"]
    assert "chat" not in [d.metadata.name for d in kube_cluster.apps.list_namespaced_deployment("ml").items]


def test_service_rollout_with_an_image_that_cannot_be_pulled_fails_clearly(kube_cluster, sent):
    kube_cluster.behaviours["broken-api"] = Behaviour(waiting_reason="ErrImagePull")
    with pytest.raises(ServiceError, match=r"rollout of broken-api cannot finish: pod .*ErrImagePull"):
        BACKEND.service(make_job("broken-api", kind="service", action="deploy", **SERVICE), print)
    BACKEND.service(make_job("broken-api", kind="service", action="undeploy", **SERVICE), print)


def test_a_services_replicas_and_their_log_lines_are_read_without_changing_it(kube_cluster, sent):
    """What the flexorch page and `flexorch logs --service` read: the Deployment's counts and
    revision, each pod with its node, the last lines of each pod's log, then only newer ones."""
    kube_cluster.behaviours["reader"] = Behaviour(pods=True, log=["replica {i} up", "replica {i} serving"])
    job = make_job("reader", kind="service", action="deploy", **SERVICE)
    out = BACKEND.service(job, print)
    try:
        sent.clear()
        status = BACKEND.service_status(job)
        assert (status["desired"], status["running"], status["healthy"]) == (2, 2, 2)
        assert status["revisions"] == [out["revision"]]
        assert sorted(r["node"] for r in status["replicas"]) == ["node-0", "node-1"]
        assert all(r["healthy"] and r["revision"] == out["revision"] for r in status["replicas"])
        logs = BACKEND.service_logs(job, tail=1)
        assert [r["lines"] for r in logs["replicas"]] == [["replica 0 serving"], ["replica 1 serving"]]
        one = BACKEND.service_logs(job, slot=1, tail=5)
        assert [r["lines"] for r in one["replicas"]] == [["replica 1 up", "replica 1 serving"]]
        cursors = {r["run_dir"]: r["cursor"] for r in logs["replicas"]}
        assert all(r["lines"] == [] for r in BACKEND.service_logs(job, cursors=cursors)["replicas"])
        assert sent == []  # read only: nothing was created, replaced or patched
    finally:
        BACKEND.service(make_job("reader", kind="service", action="undeploy", **SERVICE), print)


class Prometheus:
    """A server answering Prometheus's instant-query API (GET /api/v1/query) with a set value."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.value = "0"
        self.queries: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlparse

                outer.queries.append(parse_qs(urlparse(self.path).query)["query"][0])
                body = {"status": "success", "data": {"resultType": "vector",
                        "result": [{"metric": {}, "value": [time.time(), outer.value]}]}}  # fmt: skip
                self.send_response(200)
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_autoscale_on_kubernetes_patches_the_deployments_replicas(kube_cluster, sent, tmp_path, monkeypatch):
    """The watcher's decision (a Prometheus query through an Airflow connection) applied to the
    Deployment, as its watch task does: 9 in flight, 3 per replica → 3 replicas."""
    from flexorch_provider.services.state import ServiceState
    from flexorch_provider.services.watch import look

    prom = Prometheus()
    monkeypatch.setenv("AIRFLOW_CONN_FLEXORCH_TEST_PROM", json.dumps({"conn_type": "http", "host": prom.url}))
    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path))
    scaled = {**SERVICE, "replicas": 1, "autoscale": {"min": 1, "max": 4, "target": 3, "up_delay": "0s",
              "metric": {"source": "prometheus", "connection": "flexorch_test_prom", "query": "sum(inflight{app='scaled'})"}}}  # fmt: skip
    kube_cluster.behaviours["scaled"] = Behaviour()
    job = make_job("scaled", kind="service", action="deploy", **scaled)
    job.slots = [0]
    BACKEND.service(job, print)
    try:
        ServiceState("scaled", deployed=True, slots=[0]).save()
        prom.value = "9"
        spec = job.workload.model_dump(mode="json", exclude_none=True)
        event, seen = look(spec, "kubernetes", time.time())
        assert prom.queries == ["sum(inflight{app='scaled'})"]
        assert event is not None and event["scale"]["current"] == 1 and event["scale"]["desired"] == 3, seen
        assert "metric 9, replicas 1 → 3" in event["scale"]["why"]
        sent.clear()
        job.slots = [0, 1, 2]
        out = BACKEND.service(job, print)
        assert out["replicas"] == 3
        dep = [o for o in sent if o["kind"] == "Deployment"][-1]
        assert dep["spec"]["replicas"] == 3
        assert kube_cluster.apps.read_namespaced_deployment("scaled", "ml").spec.replicas == 3
        prom.value = "not a number"
        ServiceState("scaled", deployed=True, slots=[0, 1, 2]).save()
        event, seen = look(spec, "kubernetes", time.time() + 3600)
        assert event is None and "cannot be read" in seen  # never scale down blind
    finally:
        BACKEND.service(make_job("scaled", kind="service", action="undeploy", **scaled), print)
        prom.server.shutdown()


def test_render_prints_valid_manifests_without_secret_values():
    job = make_job("render-me", secrets={"TOKEN": "tok-987654"}, resources={"gpus": "H100:1"}, timeout="2h")
    job.workload.secrets = load_workload(
        {"name": "x", "kind": "batch", "run": "x", "secrets": {"TOKEN": "variable:token"}}
    ).secrets
    text = BACKEND.render(job)
    assert "tok-987654" not in text and "TOKEN: <secret>" in text
    import yaml

    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["Secret", "Job"]
    assert docs[1]["spec"]["activeDeadlineSeconds"] == 7200
    for d in docs:
        check_manifest(d)


def test_a_services_secret_is_one_object_updated_by_each_deploy_and_removed_by_undeploy(kube_cluster, sent):
    kube_cluster.behaviours["secret-api"] = Behaviour()
    declared = load_workload({"name": "x", "kind": "batch", "run": "x", "secrets": {"API_KEY": "variable:k"}}).secrets

    def deploy(value, action="deploy"):
        job = make_job("secret-api", kind="service", action=action, secrets={"API_KEY": value}, **SERVICE)
        job.workload.secrets = declared
        return BACKEND.service(job, print)

    deploy("key-one-1111")
    deploy("key-two-2222")
    names = {o["metadata"]["name"] for o in sent if o["kind"] == "Secret"}
    assert names == {"secret-api-env"}
    stored = kube_cluster.core.read_namespaced_secret("secret-api-env", "ml")
    import base64

    # the emulator keeps stringData as sent; a real API server folds it into base64 data
    value = (stored.string_data or {}).get("API_KEY") or base64.b64decode(
        (stored.data or {}).get("API_KEY", "")
    ).decode()
    assert value == "key-two-2222"
    deploy("key-two-2222", action="undeploy")
    assert "secret-api-env" not in [s.metadata.name for s in kube_cluster.core.list_namespaced_secret("ml").items]


def test_a_job_that_succeeded_unrecorded_is_adopted_and_a_claimed_one_runs_anew(kube_cluster, sent):
    kube_cluster.behaviours["adopt-job"] = Behaviour(log=["trained"], exit_code=0)
    job = make_job("adopt-job")
    first = BACKEND.submit(job)
    assert wait(first).state == JobState.SUCCEEDED
    adopted = BACKEND.submit(job)  # the try that submitted it died before recording the outcome
    assert adopted.job_id == first.job_id and "had already succeeded" in adopted.notes[0]
    assert BACKEND.read_logs(adopted, 0).lines == ["trained"]
    BACKEND.claim(adopted)  # recorded: a cleared task runs it again
    anew = BACKEND.submit(job)
    assert anew.job_id != first.job_id and anew.notes == []
    assert len([o for o in sent if o["kind"] == "Job"]) == 2
    assert wait(anew).state == JobState.SUCCEEDED


def test_an_unrecorded_failure_runs_again_and_says_so(kube_cluster, sent):
    kube_cluster.behaviours["refail-job"] = Behaviour(log=["boom"], exit_code=3)
    job = make_job("refail-job")
    first = BACKEND.submit(job)
    assert wait(first).state == JobState.FAILED
    again = BACKEND.submit(job)
    assert again.job_id != first.job_id
    assert again.notes == [f"the previous try's Job {first.job_id} ended Failed without its outcome reaching "
                           "Airflow: running it again"]  # fmt: skip


def test_a_private_image_pulls_with_a_secret_of_its_connections_login_that_goes_with_the_job(kube_cluster, sent):
    kube_cluster.behaviours["private-job"] = Behaviour(exit_code=None, log=["working"])
    job = make_job("private-job", container={"pull": "always", "registry_connection": "ghcr_bot"})
    job.registry = {"registry": "ghcr.io", "login": "bot", "password": "tok-private-1"}
    handle = BACKEND.submit(job)
    pull = next(
        o for o in kube_cluster.core.list_namespaced_secret("ml").items if o.type == "kubernetes.io/dockerconfigjson"
    )
    # the emulator keeps stringData as sent; a real API server turns it into base64 data
    raw = (
        pull.string_data[".dockerconfigjson"] if pull.data is None else base64.b64decode(pull.data[".dockerconfigjson"])
    )
    auths = json.loads(raw)["auths"]
    assert base64.b64decode(auths["ghcr.io"]["auth"]).decode() == "bot:tok-private-1"
    pod = next(o for o in sent if o["kind"] == "Job")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": pull.metadata.name}]
    assert pod["containers"][0]["imagePullPolicy"] == "Always" and "tok-private-1" not in json.dumps(pod)
    check_manifest(next(d for d in k8s.job_manifests(job) if d["kind"] == "Secret"))
    BACKEND.cancel(handle)
    assert pull.metadata.name not in [s.metadata.name for s in kube_cluster.core.list_namespaced_secret("ml").items]
    rendered = BACKEND.render(job)
    assert "tok-private-1" not in rendered and "kubernetes.io/dockerconfigjson" in rendered
    plain = next(o for o in k8s.job_manifests(make_job("plain-job")) if o["kind"] == "Job")
    assert "imagePullPolicy" not in plain["spec"]["template"]["spec"]["containers"][0]  # the cluster's default


def test_code_from_git_is_fetched_by_an_init_container_at_the_commit_the_task_resolved(
    kube_cluster, sent, tmp_path, monkeypatch
):
    """The pod's init container fetches the commit into a volume the job starts in; the token reaches
    only that container, from the run's Secret. The script is run here for real against a repository."""
    import subprocess

    from flexorch_provider.backends.kubernetes.manifests import FETCH_SCRIPT
    from flexorch_provider.code import bundle_for

    repo = tmp_path / "repo"
    git = git_repo(repo, {"src/train.py": "print('from git')\n"})
    monkeypatch.setenv("AIRFLOW_CONN_FLEX_GIT_TOKEN", json.dumps({"conn_type": "generic", "login": "bot",
                                                                    "password": "tok-not-in-the-pod-spec"}))  # fmt: skip
    kube_cluster.behaviours["from-git"] = Behaviour(exit_code=0)
    job = make_job("from-git", code={"git": repo.as_uri(), "ref": "main", "path": "src", "connection": "flex_git_token"},
                   workdir="runs")  # fmt: skip
    job.code, job.workdir = bundle_for(job.workload, None), job.workload.workdir
    assert job.code is not None and job.code.git is not None and [f.path for f in job.code.files] == ["train.py"]
    handle = BACKEND.submit(job)
    assert wait(handle).state == JobState.SUCCEEDED
    obj = next(o for o in sent if o["kind"] == "Job")
    secret = next(o for o in sent if o["kind"] == "Secret")
    pod = obj["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    main = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in init["env"]}
    commit = job.code.git.commit
    assert env == {"FLEXORCH_GIT_URL": repo.as_uri(), "FLEXORCH_GIT_REF": "main", "FLEXORCH_GIT_COMMIT": commit,
                   "FLEXORCH_GIT_USER": "bot", "FLEXORCH_GIT_TOKEN": None}  # fmt: skip
    token = next(e for e in init["env"] if e["name"] == "FLEXORCH_GIT_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token == {"name": secret["metadata"]["name"], "key": "FLEXORCH_GIT_TOKEN"}
    assert secret["stringData"] == {"FLEXORCH_GIT_TOKEN": "tok-not-in-the-pod-spec"}
    assert "tok-not-in-the-pod-spec" not in json.dumps(obj) and "FLEXORCH_GIT_TOKEN" not in str(main["env"])
    assert main["workingDir"] == "/flexorch/code/repo/src/runs"
    assert {"name": "FLEXORCH_CODE_COMMIT", "value": commit} in main["env"]
    assert pod["volumes"] == [{"name": "flexorch-code", "emptyDir": {}}]

    # the init container's script, run here as the pod would (its volume a folder, git from the system)
    volume = tmp_path / "volume"
    volume.mkdir()
    script = FETCH_SCRIPT.replace("/flexorch/code", str(volume))
    run_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **{k: v for k, v in env.items() if v}}
    done = subprocess.run(["/bin/sh", "-c", script], env=run_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (volume / "repo" / "src" / "train.py").read_text() == "print('from git')\n"
    (repo / "src" / "train.py").write_text("print('moved on')\n")  # the branch moves after the task resolved it
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    shutil_volume = tmp_path / "volume2"
    shutil_volume.mkdir()
    done = subprocess.run(["/bin/sh", "-c", FETCH_SCRIPT.replace("/flexorch/code", str(shutil_volume))],
                          env=run_env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr  # the commit itself is still fetched (the server gives it by id)
    assert (shutil_volume / "repo" / "src" / "train.py").read_text() == "print('from git')\n"


def test_a_long_job_keeps_its_checkpoints_on_a_claim_gets_shm_and_a_warning_and_an_eviction_is_a_cause(
    kube_cluster, sent
):
    """checkpoint_dir on a PersistentVolumeClaim (this run key's folder of it), /dev/shm sized, the warning
    as a preStop hook inside a grace period that covers it (the Job's deadline moved so the SIGTERM comes at
    the timeout); an evicted pod fails the Job with the cause ``evicted``, which recovery acts on."""
    fields = {"checkpoint_dir": "/ckpt", "timeout": "10m", "warn_before": {"signal": "USR1", "before": "30s"},
              "resources": {"memory": "8Gi", "shm": "2Gi"},
              "kubernetes": {"connection": KUBE_CONN, "namespace": "ml", "checkpoint_claim": "train-ckpt"}}  # fmt: skip
    with pytest.raises(SubmitError, match=r"no PersistentVolumeClaim 'train-ckpt' in namespace 'ml': create it"):
        BACKEND.submit(make_job("long-train", **fields))
    jobs = kube_cluster.batch.list_namespaced_job("ml").items
    assert not [j for j in jobs if j.metadata.labels.get("flexorch.io/name") == "long-train"]
    kube_cluster.core.create_namespaced_persistent_volume_claim("ml", {"apiVersion": "v1",
        "kind": "PersistentVolumeClaim", "metadata": {"name": "train-ckpt", "namespace": "ml"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}}})  # fmt: skip
    kube_cluster.behaviours["long-train"] = Behaviour(log=["step 1", "step 2"], run_for=0.5,
                                                      evict="EvictionByEvictionAPI")  # fmt: skip
    job = make_job("long-train", **fields)
    status = wait(BACKEND.submit(job))
    assert (status.state, status.cause) == (JobState.FAILED, "evicted"), status
    assert "its pod was stopped by the cluster (EvictionByEvictionAPI: Eviction API: evicting)" in status.message
    manifest = next(o for o in sent if o["kind"] == "Job")
    pod = manifest["spec"]["template"]["spec"]
    main = pod["containers"][0]
    where = f"/ckpt/{job.key_slug}"
    assert {"name": "FLEXORCH_CHECKPOINT_DIR", "value": where} in main["env"]
    assert {"name": "flexorch-checkpoints", "mountPath": where, "subPath": job.key_slug} in main["volumeMounts"]
    assert {"name": "flexorch-checkpoints", "persistentVolumeClaim": {"claimName": "train-ckpt"}} in pod["volumes"]
    assert {"name": "flexorch-shm", "mountPath": "/dev/shm"} in main["volumeMounts"]
    assert {"name": "flexorch-shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2048Mi"}} in pod["volumes"]
    hook = main["lifecycle"]["preStop"]["exec"]["command"]
    assert (
        hook[:2] == ["/bin/sh", "-c"] and hook[2].startswith("for d in /proc/[0-9]*") and hook[2].endswith("; sleep 30")
    )
    assert main["command"] == ["/bin/sh", "-c", "trap : USR1\npython -m task"]  # its shell outlives the signal
    assert pod["terminationGracePeriodSeconds"] == 40  # the 30 s to save, then 10 s after SIGTERM
    assert manifest["spec"]["activeDeadlineSeconds"] == 570  # the warning at 9m30s, SIGTERM at the timeout

    kube_cluster.behaviours["long-train"].evictions = 0  # the next attempt runs to its end, on the same claim
    again = make_job("long-train", **fields)
    again = replace(again, run_key=job.run_key)
    second = BACKEND.submit(again)
    assert wait(second).state == JobState.SUCCEEDED
    mounts = [o for o in sent if o["kind"] == "Job"][-1]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "flexorch-checkpoints", "mountPath": where, "subPath": job.key_slug} in mounts


def test_a_pod_still_stopping_keeps_its_job_running_and_disruptions_name_their_cause():
    """The Job's end is its pod's end (a pod saving after a warning still runs); the reasons Kubernetes
    gives a disrupted pod map to the causes recovery knows."""
    from flexorch_provider.backends.kubernetes.status import job_status

    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}}
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 20))  # its grace period ends then
    saving = {"metadata": {"name": "p", "deletionTimestamp": soon}, "status": {"phase": "Running"}}
    assert job_status(failed, [saving]).state == JobState.RUNNING
    long_ago = {"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}}
    assert job_status(failed, [long_ago]).state == JobState.TIMEOUT  # its node is gone: no waiting forever
    gone = {"metadata": {"name": "p"}, "status": {"phase": "Failed"}}
    assert job_status(failed, [gone]).state == JobState.TIMEOUT
    broke = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    for reason, cause in (("PreemptionByScheduler", "preempted"), ("DeletionByTaintManager", "node_failed"),
                          ("TerminationByKubelet", "evicted")):  # fmt: skip
        pod = {"metadata": {"name": "p"}, "status": {"phase": "Failed", "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": reason}]}}  # fmt: skip
        assert job_status(broke, [pod]).cause == cause
    kubelet = {
        "metadata": {"name": "p"},
        "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"},
    }
    assert job_status(broke, [kubelet]).cause == "evicted"
    own = {"metadata": {"name": "p"}, "status": {"phase": "Failed"}}
    assert job_status(broke, [own]).cause is None  # the job's own failure is no cause


def test_the_warning_hook_reaches_every_process_of_the_container_and_nothing_outside(tmp_path):
    """The pod's preStop hook run for real as the kubelet runs it: inside the container's PID namespace
    (unshare/nsenter here), beside the container's command as its first process. The job's python, a
    child of that shell, saves; the shell (PID 1) goes on; a process outside the namespace is untouched."""
    import shutil
    import signal
    import subprocess

    from flexorch_provider.backends.kubernetes.manifests import job_manifests

    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.fail("this test needs root, unshare and nsenter (util-linux), as on the test machines")
    saved = tmp_path / "saved"
    (tmp_path / "train.py").write_text(
        f"import signal, time\nsignal.signal(signal.SIGUSR1, lambda *a: open({str(saved)!r}, 'w').write('saved'))\n"
        f"open({str(tmp_path / 'up')!r}, 'w').close()\ntime.sleep(60)\n"
    )
    launcher = "sleep 61 & "  # a process of the job with no handler for it: the warning would end it
    job = make_job("hooked", run=f"{launcher}{sys.executable} {tmp_path / 'train.py'}", timeout="1m",
                   warn_before={"signal": "USR1", "before": "1s"})  # fmt: skip
    manifest = next(o for o in job_manifests(job) if o["kind"] == "Job")
    main = manifest["spec"]["template"]["spec"]["containers"][0]
    outside = subprocess.Popen(["sleep", "60"])  # USR1 would end it
    container = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *main["command"]])
    try:
        deadline = time.time() + 20
        while not (tmp_path / "up").exists():
            assert time.time() < deadline and container.poll() is None, "the container's command did not start"
            time.sleep(0.05)
        first = int(subprocess.run(["pgrep", "-P", str(container.pid)], capture_output=True, text=True,
                                   check=True).stdout.split()[0])  # fmt: skip
        hook = main["lifecycle"]["preStop"]["exec"]["command"]
        done = subprocess.run(["nsenter", "-t", str(first), "-p", "-m", *hook], timeout=20)
        assert done.returncode == 0
        assert saved.read_text() == "saved"  # the job's python got the warning
        assert container.poll() is None  # its shell and python go on after it
        inside = subprocess.run(["nsenter", "-t", str(first), "-p", "-m", "ps", "-e", "-o", "args="],
                                capture_output=True, text=True).stdout  # fmt: skip
        assert "sleep 61" in inside  # it handles no USR1, so it was left alone
        assert outside.poll() is None  # kill -1 stayed inside the container's PID namespace
    finally:
        container.send_signal(signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", str(tmp_path / "train.py")], check=False)
        outside.kill()
        container.wait()
        outside.wait()
