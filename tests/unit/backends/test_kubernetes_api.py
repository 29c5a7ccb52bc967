"""The kubernetes boundary: every library error becomes ours (``from`` the original), only
submit raises SubmitError, poll changes nothing. Stand-in clients, no cluster (the emulator
round trips are in tests/integration/test_kubernetes_backend.py)."""

from __future__ import annotations

import json
import time

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from flexorch_provider.backends.base import JobHandle, JobState, ResolvedJob
from flexorch_provider.backends.kubernetes import Api, ApiError, KubernetesBackend, KubernetesJobData, job_data
from flexorch_provider.backends.kubernetes import backend as backend_module
from flexorch_provider.exceptions import BackendError, ConfigurationError, ServiceError, SubmitError
from flexorch_provider.resolve import load_workload


def api_exception(status: int, message: str | None = None) -> ApiException:
    e = ApiException(status=status, reason="Forbidden" if status == 403 else "Error")
    if message:
        e.body = json.dumps({"kind": "Status", "message": message})
    return e


LIBRARY_ERRORS = {
    "api-403": (api_exception(403, 'jobs.batch is forbidden: User "x" cannot list'), 403, "jobs.batch is forbidden"),
    "api-no-body": (api_exception(500), 500, "HTTP 500 Error"),
    "urllib3": (urllib3.exceptions.MaxRetryError(None, "/apis/batch/v1", reason="connection refused"), None, "Max"),
    "config": (ConfigException("Invalid kube-config file. No configuration found."), None, "Invalid kube-config"),
    "model": (ValueError("Invalid value for `conditions`, must not be `None`"), None, "Invalid value"),
}


class Clients:
    """A stand-in for CoreV1Api/BatchV1Api/AppsV1Api: every call is recorded; answers are canned
    per method name, and ``fail`` makes every call raise."""

    def __init__(self, answers: dict | None = None, fail: BaseException | None = None) -> None:
        self.answers = answers or {}
        self.fail = fail
        self.calls: list[str] = []

    @property
    def api_client(self):
        return self

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            self.calls.append(name)
            if self.fail is not None:
                raise self.fail
            return self.answers.get(name, {"items": []})

        return call


def fake_api(clients: Clients) -> Api:
    return Api.from_clients(clients, clients, clients)


@pytest.fixture
def connect(monkeypatch):
    """backend.Api(conn) → an Api over the given stand-in clients."""

    def use(clients: Clients) -> Clients:
        monkeypatch.setattr(backend_module, "Api", lambda conn: fake_api(clients))
        return clients

    return use


def handle(**data) -> JobHandle:
    return JobHandle("kubernetes", "job-1", "d/t/r/-1", {"conn": "k", "namespace": "ml", **data})


def make_job(name: str = "job", action: str | None = None, **fields) -> ResolvedJob:
    kind = "service" if action else "batch"
    w = load_workload({"name": name, "kind": kind, "target": "kubernetes", "image": "img:1", "run": "run",
                       "kubernetes": {"connection": "k", "namespace": "ml"}, **fields})  # fmt: skip
    return ResolvedJob(run_key=f"{name}/t/run-{time.time_ns()}/-1", name=name, kind=kind, workload=w, run=w.run,
                       action=action)  # fmt: skip


# --- the Api boundary ----------------------------------------------------------------------
API_CALLS = {
    "list_jobs": lambda api: api.list_jobs("ml", "a=b"),
    "list_pods": lambda api: api.list_pods("ml", "a=b"),
    "read_deployment": lambda api: api.read_deployment("ml", "svc"),
    "pod_log": lambda api: api.pod_log("ml", "pod", since_ns=10**18),
    "create": lambda api: api.create({"kind": "Job", "metadata": {"name": "j", "namespace": "ml"}}),
    "replace": lambda api: api.replace({"kind": "Deployment", "metadata": {"name": "d", "namespace": "ml"}}),
    "apply": lambda api: api.apply({"kind": "Secret", "metadata": {"name": "s", "namespace": "ml"}}),
    "delete": lambda api: api.delete("Job", "ml", "j"),
}


@pytest.mark.parametrize("error", LIBRARY_ERRORS, ids=list(LIBRARY_ERRORS))
@pytest.mark.parametrize("call", API_CALLS, ids=list(API_CALLS))
def test_every_library_error_of_every_request_becomes_an_api_error_from_it(call, error):
    original, status, text = LIBRARY_ERRORS[error]
    with pytest.raises(ApiError) as raised:
        API_CALLS[call](fake_api(Clients(fail=original)))
    assert raised.value.__cause__ is original and raised.value.status == status and text in str(raised.value)
    assert isinstance(raised.value, BackendError) and not isinstance(raised.value, SubmitError)


def test_apply_replaces_on_conflict_and_delete_of_a_missing_object_is_false():
    class Conflicts(Clients):
        def create_namespaced_secret(self, *a, **kw):
            raise api_exception(409, "already exists")

    clients = Conflicts()
    assert fake_api(clients).apply({"kind": "Secret", "metadata": {"name": "s", "namespace": "ml"}}) == "updated"
    assert clients.calls == ["patch_namespaced_secret"]
    assert fake_api(Clients(fail=api_exception(404, "not found"))).delete("Job", "ml", "j") is False


def test_a_client_that_cannot_be_configured_is_a_backend_error_not_a_submit_error(monkeypatch):
    from airflow.providers.cncf.kubernetes.hooks import kubernetes as hooks

    class Hook:
        def __init__(self, conn_id):
            pass

        @property
        def api_client(self):
            raise ConfigException("Invalid kube-config file. No configuration found.")

    monkeypatch.setattr(hooks, "KubernetesHook", Hook)
    with pytest.raises(ApiError, match="cannot configure the Kubernetes client") as raised:
        Api("k")
    assert isinstance(raised.value.__cause__, ConfigException) and not isinstance(raised.value, SubmitError)
    # poll, logs and cancel say so as a BackendError; submit and service (nothing taken yet) refuse
    backend = KubernetesBackend()
    for follow in (lambda: backend.poll([handle()]), lambda: backend.read_logs(handle(), 0),
                   lambda: backend.cancel(handle())):  # fmt: skip
        with pytest.raises(BackendError) as raised:
            follow()
        assert not isinstance(raised.value, SubmitError)
    with pytest.raises(SubmitError):
        backend.submit(make_job())
    with pytest.raises(SubmitError):
        backend.service(make_job("svc", action="deploy"), print)


def test_a_missing_connection_is_a_configuration_error(monkeypatch):
    from airflow.providers.cncf.kubernetes.hooks import kubernetes as hooks

    class AirflowNotFoundException(Exception):
        pass

    class Hook:
        def __init__(self, conn_id):
            raise AirflowNotFoundException(conn_id)

    monkeypatch.setattr(hooks, "KubernetesHook", Hook)
    with pytest.raises(ConfigurationError, match="does not exist"):
        Api("missing")


# --- the backend's side of the contract ----------------------------------------------------
def test_poll_read_logs_and_cancel_raise_backend_errors_never_submit_errors(connect):
    original = api_exception(403, "forbidden")
    connect(Clients(fail=original))
    backend = KubernetesBackend()
    for follow, text in ((lambda: backend.poll([handle()]), "cannot list Jobs/Pods"),
                         (lambda: backend.read_logs(handle(), 0), "cannot read the log"),
                         (lambda: backend.cancel(handle()), "could not delete Job job-1")):  # fmt: skip
        with pytest.raises(BackendError, match=text) as raised:
            follow()
        assert not isinstance(raised.value, SubmitError) and raised.value.__cause__.__cause__ is original
    with pytest.raises(SubmitError, match="cannot list Jobs") as raised:
        backend.submit(make_job())
    assert raised.value.__cause__.__cause__ is original


def test_a_log_that_is_not_there_yet_is_empty(connect):
    class NotYet(Clients):
        def call_api(self, *a, **kw):
            raise api_exception(400, 'container "main" in pod "p" is waiting to start')

    connect(NotYet(answers={"list_namespaced_pod": {"items": [{"metadata": {"name": "p", "labels": {
        "app.kubernetes.io/managed-by": "flexorch", "job-name": "job-1"}}}]}}))  # fmt: skip
    chunk = KubernetesBackend().read_logs(handle(), 7)
    assert chunk.lines == [] and chunk.cursor == 7


def test_undeploy_and_rollout_errors_are_service_errors(connect):
    backend = KubernetesBackend()
    connect(Clients(fail=urllib3.exceptions.ProtocolError("Connection aborted.")))
    with pytest.raises(ServiceError, match="could not undeploy service svc") as raised:
        backend.service(make_job("svc", action="undeploy"), print)
    assert isinstance(raised.value.__cause__.__cause__, urllib3.exceptions.ProtocolError)

    class RolloutFails(Clients):
        def read_namespaced_deployment(self, *a, **kw):
            raise api_exception(403, "deployments.apps is forbidden")

    connect(RolloutFails())
    with pytest.raises(
        ServiceError, match=r"rollout of svc: cannot read the Deployment: deployments\.apps is forbidden"
    ):
        backend.service(make_job("svc", action="deploy"), print)


def stuck_cluster(job: ResolvedJob, name: str) -> Clients:
    labels = {"app.kubernetes.io/managed-by": "flexorch", "flexorch.io/run": job.key_slug}
    live = {"metadata": {"name": name, "labels": labels}, "spec": {}, "status": {}}
    pod = {"metadata": {"name": f"{name}-x", "labels": {**labels, "job-name": name}},
           "status": {"containerStatuses": [{"image": "img:1", "state": {"waiting": {
               "reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}}  # fmt: skip
    return Clients(answers={"list_namespaced_job": {"items": [live]}, "list_namespaced_pod": {"items": [pod]}})


def test_poll_only_reports_and_the_next_submit_replaces_an_attempt_that_can_never_start(connect):
    backend = KubernetesBackend()
    job = make_job()
    clients = connect(stuck_cluster(job, "job-old"))
    h = JobHandle("kubernetes", "job-old", job.run_key, {"conn": "k", "namespace": "ml", "secret": None, "nodes": 1})
    status = backend.poll([h])["job-old"]
    assert status.state == JobState.FAILED and status.message.startswith("ImagePullBackOff")
    assert clients.calls == ["list_namespaced_job", "list_namespaced_pod"]  # reads only: nothing deleted
    clients.calls.clear()
    again = backend.submit(job)
    assert again.job_id != "job-old"
    assert clients.calls == ["list_namespaced_job", "list_namespaced_pod", "delete_namespaced_job",
                             "create_namespaced_job"]  # fmt: skip


def test_handle_data_is_typed_and_old_handles_read_with_defaults(connect):
    connect(Clients())
    job = make_job(resources={"nodes": 2})
    data: KubernetesJobData = job_data(KubernetesBackend().submit(job))
    assert data == {"conn": "k", "namespace": "ml", "secret": None, "nodes": 2, "registry_secret": None}
    assert job_data(handle()) == {"conn": "k", "namespace": "ml", "secret": None, "nodes": 1, "registry_secret": None}
    with pytest.raises(BackendError, match="no kubernetes handle data"):
        job_data(JobHandle("kubernetes", "j", "r", {}))
