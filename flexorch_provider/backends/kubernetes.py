"""The ``kubernetes`` target: a Job per run, a Deployment + Service per service.

Talks to the cluster through apache-airflow-providers-cncf-kubernetes' ``KubernetesHook``
(the spec's ``kubernetes.connection``). The manifests come from :func:`manifests` — pure
data, also what ``flexorch render --target kubernetes`` prints.

- Jobs: restartPolicy Never and backoffLimit 0 (retries are Airflow's), activeDeadlineSeconds
  from the timeout, ttlSecondsAfterFinished, GPUs as ``nvidia.com/gpu`` limits and the GPU
  model as a node selector on ``kubernetes.gpu_label``; ``nodes > 1`` → an Indexed Job with a
  headless Service so rank 0 has a stable address. Labels carry the run key's slug: submit
  reattaches to a live Job of the same run key instead of creating a second one.
- Secrets resolved from Airflow go into a Secret next to the Job (never into the Job spec);
  ``kubernetes:`` secrets are referenced where they are.
- poll: one Job list and one Pod list per (connection, namespace) per interval for every
  followed Job. ImagePullBackOff and friends, OOMKilled and Unschedulable (with the
  scheduler's message) become clear messages; a Job that can never pull its image is
  deleted as it is reported failed.
- logs: the rank-0 pod's log from a byte offset, asked for by time (``sinceTime``) once this
  process has read it, so a long log is not read again every poll.
- cancel: delete the Job (background propagation) and its Secret.
- services: apply Deployment (+ Service with a port), probes from ``health``, rolling
  parameters from ``update``; wait for the rollout with progress in the task log; undeploy
  deletes both. Kubernetes restores replicas itself, so there is no reconcile run.
"""

from __future__ import annotations

import calendar
import collections
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from flexorch_provider.backends.base import (
    Backend,
    JobHandle,
    JobState,
    JobStatus,
    LogChunk,
    LogCursor,
    ResolvedJob,
    complete_lines,
)
from flexorch_provider.exceptions import BackendError, ConfigurationError, ServiceError, SubmitError

MANAGED = {"app.kubernetes.io/managed-by": "flexorch"}
RUN_LABEL = "flexorch.io/run"
NAME_LABEL = "flexorch.io/name"
SERVICE_LABEL = "flexorch.io/service"
RUN_KEY_ANNOTATION = "flexorch.io/run-key"
REVISION_ANNOTATION = "flexorch.io/revision"
TTL_AFTER_FINISHED = 24 * 3600
CONTAINER = "main"
NEVER_PULLS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
               "CreateContainerError"}  # fmt: skip
ROLLOUT_TIMEOUT_S = 600


# --- manifests -----------------------------------------------------------------------------
def dns_label(text: str, limit: int = 63) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].rstrip("-")
    return name or "flexorch"


def _labels(job: ResolvedJob, **extra: str) -> dict[str, str]:
    opts: Any = job.workload.kubernetes
    return {**opts.labels, **MANAGED, NAME_LABEL: dns_label(job.name), **extra}


def _quantity_memory(size: int) -> str:
    return f"{math.ceil(size / 2**20)}Mi"


def _quantity_cpu(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{math.ceil(cpus * 1000)}m"


def _command(job: ResolvedJob) -> list[str]:
    """The container's command: setup (failing fast) then run; user text only as argv items."""
    if isinstance(job.run, list) and not job.setup:
        return list(job.run)
    if isinstance(job.run, list):
        return ["/bin/sh", "-c", "(set -e\n" + job.setup + '\n) || exit $?\nexec "$@"', "sh", *job.run]  # type: ignore[operator]
    script = job.run if not job.setup else "(set -e\n" + job.setup + "\n) || exit $?\n" + job.run
    return ["/bin/sh", "-c", script]


def _airflow_secrets(job: ResolvedJob) -> dict[str, str]:
    """Secret values resolved from Airflow (Kubernetes secrets are referenced, not copied)."""
    w: Any = job.workload
    return {k: v for k, v in job.secrets.items() if k in w.secrets and w.secrets[k].source != "kubernetes"}


def secret_name(job: ResolvedJob) -> str:
    """A run's own Secret; a service's is one per service (every deploy updates the same one)."""
    return dns_label(f"{job.name}-env" if job.action is not None else f"{job.key_slug}-env")


def _env(job: ResolvedJob, extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    w: Any = job.workload
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in {**job.env, **(extra or {})}.items()]
    env.append({"name": "FLEXORCH_RUN_KEY", "value": job.run_key})
    for key, ref in w.secrets.items():
        if ref.source == "kubernetes":
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key or key}}})
        elif key in _airflow_secrets(job):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name(job), "key": key}}})
    return env


def _container(job: ResolvedJob, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    w: Any = job.workload
    res = w.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpus:
        requests["cpu"] = _quantity_cpu(res.cpus)
    if res.memory:
        requests["memory"] = limits["memory"] = _quantity_memory(res.memory)
    if res.gpus and res.gpus.count:
        limits["nvidia.com/gpu"] = int(res.gpus.count)
    container: dict[str, Any] = {"name": CONTAINER, "image": w.image, "command": _command(job),
                                 "env": _env(job, extra_env)}  # fmt: skip
    if job.workdir:
        container["workingDir"] = job.workdir
    if requests or limits:
        container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return container


def _pod_spec(job: ResolvedJob, container: dict[str, Any], restart: str) -> dict[str, Any]:
    w: Any = job.workload
    opts = w.kubernetes
    spec: dict[str, Any] = {"restartPolicy": restart, "containers": [container]}
    selector = dict(opts.node_selector)
    if w.resources.gpus and w.resources.gpus.type:
        selector.setdefault(opts.gpu_label, w.resources.gpus.type)
    if selector:
        spec["nodeSelector"] = selector
    if opts.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in opts.tolerations]
    if opts.service_account:
        spec["serviceAccountName"] = opts.service_account
    return spec


def job_manifests(job: ResolvedJob, attempt: str = "1") -> list[dict[str, Any]]:
    w: Any = job.workload
    if not w.image:
        raise ConfigurationError("the kubernetes target needs `image` in the spec (e.g. image: python:3.11-slim)")
    ns = w.kubernetes.namespace
    name = dns_label(f"{job.key_slug}-{attempt}")
    labels = _labels(job, **{RUN_LABEL: job.key_slug})
    meta = {"name": name, "namespace": ns, "labels": labels, "annotations": {RUN_KEY_ANNOTATION: job.run_key}}
    nodes = w.resources.nodes
    extra_env = None
    if nodes > 1:
        extra_env = {"MASTER_ADDR": f"{name}-0.{name}", "MASTER_PORT": "29500", "WORLD_SIZE": str(nodes)}
    pod = _pod_spec(job, _container(job, extra_env), "Never")
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if job.timeout_s:
        job_spec["activeDeadlineSeconds"] = job.timeout_s
    out: list[dict[str, Any]] = []
    if _airflow_secrets(job):
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret_name(job), "namespace": ns, "labels": labels},
                    "stringData": _airflow_secrets(job)})  # fmt: skip
    if nodes > 1:
        # rank = JOB_COMPLETION_INDEX; pods resolve each other as <job>-<index>.<job>
        job_spec.update(completions=nodes, parallelism=nodes, completionMode="Indexed")
        pod["subdomain"] = name
        pod["containers"][0]["env"].append(
            {"name": "RANK", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}
        )  # fmt: skip
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "annotations": {}},
                    "spec": {"clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": name}}})  # fmt: skip
    out.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec})
    return json.loads(json.dumps(out))  # no shared sub-objects (YAML aliases, surprises on mutation)


def service_manifests(job: ResolvedJob) -> list[dict[str, Any]]:
    w: Any = job.workload
    if not w.image:
        raise ConfigurationError("the kubernetes target needs `image` in the spec")
    ns = w.kubernetes.namespace
    name = dns_label(job.name)
    selector = {SERVICE_LABEL: name}
    labels = _labels(job, **selector)
    container = _container(job)
    container["env"] = [e for e in container["env"] if e["name"] != "FLEXORCH_RUN_KEY"]  # same for every run
    if w.port:
        container["ports"] = [{"name": "http", "containerPort": w.port}]
    if w.health:
        h = w.health
        probe: dict[str, Any] = (
            {"httpGet": {"path": h.http, "port": w.port}}
            if h.http
            else {"exec": {"command": h.command if isinstance(h.command, list) else ["/bin/sh", "-c", h.command]}}
        )
        timing = {"periodSeconds": max(1, int(h.interval.total_seconds())),
                  "timeoutSeconds": max(1, int(h.timeout.total_seconds()))}  # fmt: skip
        container["readinessProbe"] = {**probe, **timing}
        container["livenessProbe"] = {**probe, **timing, "initialDelaySeconds": int(h.grace.total_seconds())}
    pod = _pod_spec(job, container, "Always")
    revision = hashlib.sha256(json.dumps([container, pod], sort_keys=True, default=str).encode()).hexdigest()[:10]
    if w.update.strategy == "rolling":
        strategy: dict[str, Any] = {"type": "RollingUpdate", "rollingUpdate": {
            "maxSurge": w.update.max_surge, "maxUnavailable": w.update.max_unavailable}}  # fmt: skip
    else:
        strategy = {"type": "Recreate"}
    out: list[dict[str, Any]] = []
    if _airflow_secrets(job):
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret_name(job), "namespace": ns, "labels": labels},
                    "stringData": _airflow_secrets(job)})  # fmt: skip
    out.append({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": {REVISION_ANNOTATION: revision}},
        "spec": {"replicas": w.replicas, "selector": {"matchLabels": selector}, "strategy": strategy,
                 "template": {"metadata": {"labels": labels, "annotations": {REVISION_ANNOTATION: revision}},
                              "spec": pod}},
    })  # fmt: skip
    if w.port:
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
                    "spec": {"selector": selector, "ports": [{"name": "http", "port": w.port,
                                                               "targetPort": "http"}]}})  # fmt: skip
    return json.loads(json.dumps(out))


def manifests(job: ResolvedJob) -> list[dict[str, Any]]:
    return service_manifests(job) if job.action is not None else job_manifests(job)


# --- pod logs from a byte offset, without reading the whole log every poll ---------------------
# The log API has no byte offsets, only ``sinceTime`` (and ``timestamps``: the kubelet's time
# before every line). Cursors stay byte offsets into the log without the timestamps. After a
# read this process remembers, per pod and cursor, the last line read: its time, how many lines
# up to it had that time, and a digest of it. The next read asks for lines since a second before
# that time, finds that line again and takes what follows it in the log, in log order (stdout
# and stderr lines can be stamped slightly out of order). When the line is not found, or a
# cursor was not handed out by this process (a restarted triggerer; the worker's cursor in the
# triggerer), the whole log is read once.
_LOG_MARKS: collections.OrderedDict[tuple[str, str, str, int], tuple[int, int, bytes]] = collections.OrderedDict()
MAX_LOG_MARKS = 4096
_STAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
Record = tuple[int, bytes]  # (nanoseconds since the epoch, UTC; the line with its newline)


def _instant(stamp: bytes) -> int | None:
    """An RFC 3339 time as the kubelet writes it (trailing zeros trimmed, the node's offset kept)
    → nanoseconds since the epoch; None if it is not one."""
    m = _STAMP.fullmatch(stamp)
    if m is None:
        return None
    seconds = calendar.timegm(time.strptime(m[1].decode(), "%Y-%m-%dT%H:%M:%S"))
    if m[3] != b"Z":
        sign = 1 if m[3][:1] == b"+" else -1
        seconds -= sign * (int(m[3][1:3]) * 3600 + int(m[3][4:6]) * 60)
    return seconds * 10**9 + int((m[2] or b"0").ljust(9, b"0"))


def _records(raw: bytes) -> list[Record] | None:
    """``time line`` records (split at newlines only: a progress bar's \\r stays in its line);
    None if one has no time (then nothing is assumed about the log's layout)."""
    pieces = raw.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    out = []
    for line in lines:
        stamp, _, rest = line.partition(b" ")
        at = _instant(stamp)
        if at is None:
            return None
        out.append((at, rest))
    return out


def _digest(line: bytes) -> bytes:
    return hashlib.blake2b(line, digest_size=16).digest()


def _pod_log(api: Any, ns: str, pod: str, since_ns: int | None = None, timestamps: bool = True) -> bytes:
    """The container's log, with the kubelet's time on every line, from ``since_ns`` (whole
    seconds) on. (The Python client's read_namespaced_pod_log has no sinceTime; the API has.)"""
    query = [("container", CONTAINER)] + ([("timestamps", "true")] if timestamps else [])
    if since_ns is not None:
        query.append(("sinceTime", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since_ns // 10**9))))
    response = api.core.api_client.call_api(
        "/api/v1/namespaces/{namespace}/pods/{name}/log", "GET", path_params={"namespace": ns, "name": pod},
        query_params=query, header_params={"Accept": "*/*"}, auth_settings=["BearerToken"],
        _preload_content=False, _return_http_data_only=True,
    )  # fmt: skip
    return bytes(response.data)


def _mark(records: list[Record], i: int) -> tuple[int, int, bytes]:
    at, line = records[i]
    return at, sum(1 for a, _ in records[: i + 1] if a == at), _digest(line)


def _read_from(
    records: list[Record], start: int, mark: tuple[int, int, bytes] | None, where: tuple[str, ...]
) -> LogChunk | None:
    """The complete lines after byte ``start`` (timestamps removed) and the marks for the next
    read; None when ``mark``'s line is not in ``records`` (then read the whole log)."""
    if mark is not None:  # records since a second before the mark: find its line, take what follows
        at, count, digest = mark
        nth = [i for i, (a, _) in enumerate(records) if a == at]
        if len(nth) < count or _digest(records[nth[count - 1]][1]) != digest:
            return None
        first = nth[count - 1] + 1
    else:  # the whole log: the cursor must fall between two records
        offset, first = 0, 0
        while first < len(records) and offset < start:
            offset += len(records[first][1])
            first += 1
        if offset != start:
            return complete_lines(b"".join(line for _, line in records)[start:], start)
    chunk = complete_lines(b"".join(line for _, line in records[first:]), start)
    offset, last = start, first - 1
    for i in range(first, len(records)):
        if offset + len(records[i][1]) > chunk.cursor:
            break
        offset += len(records[i][1])
        last = i
    if last >= 0 and offset == chunk.cursor:
        _LOG_MARKS[(*where, chunk.cursor)] = _mark(records, last)
        while len(_LOG_MARKS) > MAX_LOG_MARKS:
            _LOG_MARKS.popitem(last=False)
    return chunk


# --- the API -----------------------------------------------------------------------------------
class Api:
    """The three clients we need, from the Airflow connection."""

    def __init__(self, conn_id: str) -> None:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
        from kubernetes import client

        try:
            hook = KubernetesHook(conn_id=conn_id)
            api_client = hook.api_client
        except Exception as e:
            if type(e).__name__ == "AirflowNotFoundException":
                raise ConfigurationError(
                    f"the Airflow connection {conn_id!r} does not exist; create it (type kubernetes) or set "
                    "kubernetes.connection in the spec"
                ) from None
            raise SubmitError(f"cannot configure the Kubernetes client from connection {conn_id!r}: {e}") from e
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        ns = obj["metadata"]["namespace"]
        kind = obj["kind"]
        fn = {"Job": self.batch.create_namespaced_job, "Secret": self.core.create_namespaced_secret,
              "Service": self.core.create_namespaced_service,
              "Deployment": self.apps.create_namespaced_deployment}[kind]  # fmt: skip
        return _plain(fn(ns, obj))

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (field manager ``flexorch``): fields we stopped setting are removed,
        which a merge patch would keep."""
        ns, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
        fn = {"Secret": self.core.patch_namespaced_secret, "Service": self.core.patch_namespaced_service,
              "Deployment": self.apps.patch_namespaced_deployment}[kind]  # fmt: skip
        return _plain(fn(name, ns, obj, field_manager="flexorch", force=True,
                         _content_type="application/apply-patch+yaml"))  # fmt: skip

    def apply(self, obj: dict[str, Any]) -> str:
        """Create, or replace when it exists: 'created' | 'updated'."""
        try:
            self.create(obj)
            return "created"
        except Exception as e:
            if getattr(e, "status", None) != 409:
                raise
        self.replace(obj)
        return "updated"

    def delete(self, kind: str, ns: str, name: str) -> bool:
        from kubernetes import client

        body = client.V1DeleteOptions(propagation_policy="Background")
        fn = {"Job": self.batch.delete_namespaced_job, "Secret": self.core.delete_namespaced_secret,
              "Service": self.core.delete_namespaced_service,
              "Deployment": self.apps.delete_namespaced_deployment}[kind]  # fmt: skip
        try:
            fn(name, ns, body=body)
            return True
        except Exception as e:
            if getattr(e, "status", None) == 404:
                return False
            raise


def _plain(obj: Any) -> dict[str, Any]:
    """A client model (or dict) as the JSON the API server speaks."""
    if isinstance(obj, dict):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def _api_error(e: Exception) -> str:
    body = getattr(e, "body", None)
    if body:
        try:
            return str(json.loads(body).get("message") or body)[:500]
        except (ValueError, AttributeError):
            return str(body)[:500]
    return str(e).splitlines()[0][:500]


def _ours(items: list[dict[str, Any]], **labels: str) -> list[dict[str, Any]]:
    """Filter on labels ourselves too (a selector the server ignored must not widen what we act on)."""
    want = {**MANAGED, **labels}
    return [i for i in items if want.items() <= ((i.get("metadata") or {}).get("labels") or {}).items()]


# --- the backend ---------------------------------------------------------------------------
class KubernetesBackend(Backend):
    name = "kubernetes"

    def render(self, job: ResolvedJob) -> str:
        import yaml

        docs = manifests(job)
        for d in docs:
            if d["kind"] == "Secret":
                d["stringData"] = {k: "<secret>" for k in d["stringData"]}
        w: Any = job.workload
        head = f"# kubernetes: connection {w.kubernetes.connection!r}, namespace {w.kubernetes.namespace!r}\n"
        return head + yaml.safe_dump_all(docs, sort_keys=False)

    def batch_key(self, handle: JobHandle) -> str:
        return f"kubernetes:{handle.data['conn']}:{handle.data['namespace']}"

    def _handle(self, job: ResolvedJob, name: str) -> JobHandle:
        w: Any = job.workload
        return JobHandle(self.name, name, job.run_key,
                         {"conn": w.kubernetes.connection, "namespace": w.kubernetes.namespace,
                          "secret": secret_name(job) if _airflow_secrets(job) else None, "nodes": w.resources.nodes})  # fmt: skip

    def submit(self, job: ResolvedJob) -> JobHandle:
        w: Any = job.workload
        ns = w.kubernetes.namespace
        api = Api(w.kubernetes.connection)
        selector = f"{RUN_LABEL}={job.key_slug}"
        try:
            existing = _ours(_plain(api.batch.list_namespaced_job(ns, label_selector=selector))["items"],
                             **{RUN_LABEL: job.key_slug})  # fmt: skip
        except Exception as e:
            raise SubmitError(f"cannot list Jobs in namespace {ns!r}: {_api_error(e)}") from e
        for item in existing:
            if _job_finished(item) is None:
                return self._handle(job, item["metadata"]["name"])  # reattach: never a second Job per run key
        # a fresh name per attempt: a deleted Job may linger (finalizers) and block its name
        docs = job_manifests(job, attempt=secrets.token_hex(2))
        try:
            for doc in docs:
                if doc["kind"] == "Secret":
                    api.apply(doc)
                else:
                    api.create(doc)
        except Exception as e:
            raise SubmitError(f"the API server refused the {doc['kind']}: {_api_error(e)}") from e
        return self._handle(job, docs[-1]["metadata"]["name"])

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        groups: dict[tuple[str, str], list[JobHandle]] = {}
        for h in handles:
            groups.setdefault((h.data["conn"], h.data["namespace"]), []).append(h)
        out: dict[str, JobStatus] = {}
        for (conn, ns), group in groups.items():
            api = Api(conn)
            selector = ",".join(f"{k}={v}" for k, v in MANAGED.items())
            try:
                jobs = {j["metadata"]["name"]: j for j in
                        _ours(_plain(api.batch.list_namespaced_job(ns, label_selector=selector))["items"])}  # fmt: skip
                pods = _ours(_plain(api.core.list_namespaced_pod(ns, label_selector=selector))["items"])
            except Exception as e:
                raise BackendError(f"cannot list Jobs/Pods in namespace {ns!r}: {_api_error(e)}") from e
            for h in group:
                mine = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == h.job_id
                        or (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == h.job_id]  # fmt: skip
                status = _job_status(jobs.get(h.job_id), mine)
                if status.state == JobState.FAILED and h.job_id in jobs and _job_finished(jobs[h.job_id]) is None:
                    self.cancel(h)  # it can never start (bad image): leave nothing behind
                out[h.job_id] = status
        return out

    def read_logs(self, handle: JobHandle, cursor: LogCursor) -> LogChunk:
        start = int(cursor or 0)
        api = Api(handle.data["conn"])
        ns = handle.data["namespace"]
        try:
            pods = _ours(_plain(api.core.list_namespaced_pod(ns, label_selector=f"job-name={handle.job_id}"))["items"])
            pods = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == handle.job_id]
            if not pods:
                return LogChunk([], start)
            pods.sort(key=lambda p: (p["metadata"].get("annotations") or {}).get(
                "batch.kubernetes.io/job-completion-index", "0"))  # fmt: skip
            pod = pods[0]["metadata"]["name"]
            where = (handle.data["conn"], ns, pod)
            mark = _LOG_MARKS.get((*where, start))
            if mark is not None:
                records = _records(_pod_log(api, ns, pod, since_ns=mark[0] - 10**9))
                chunk = _read_from(records, start, mark, where) if records is not None else None
                if chunk is not None:
                    if chunk.cursor != start:
                        _LOG_MARKS.pop((*where, start), None)
                    return chunk
            _LOG_MARKS.pop((*where, start), None)
            records = _records(_pod_log(api, ns, pod))
            if records is None:  # a line without the kubelet's time: read it the plain way
                return complete_lines(_pod_log(api, ns, pod, timestamps=False)[start:], start)
            chunk = _read_from(records, start, None, where)
        except Exception as e:
            if getattr(e, "status", None) in (400, 404):
                return LogChunk([], start)  # not started yet, or gone
            raise BackendError(f"cannot read the log of job {handle.job_id}: {_api_error(e)}") from e
        if chunk is None:
            return LogChunk([], start)
        return chunk

    def cancel(self, handle: JobHandle) -> None:
        api = Api(handle.data["conn"])
        ns = handle.data["namespace"]
        try:
            api.delete("Job", ns, handle.job_id)
            if handle.data.get("nodes", 1) > 1:
                api.delete("Service", ns, handle.job_id)  # the headless Service of an Indexed Job
            if handle.data.get("secret"):
                api.delete("Secret", ns, handle.data["secret"])
        except Exception as e:
            raise BackendError(f"could not delete Job {handle.job_id}: {_api_error(e)}") from e

    # --- services ------------------------------------------------------------------------
    def service(self, job: ResolvedJob, log: Callable[[str], None]) -> dict[str, Any]:
        w: Any = job.workload
        ns = w.kubernetes.namespace
        api = Api(w.kubernetes.connection)
        docs = service_manifests(job)
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        name = deployment["metadata"]["name"]
        if job.action == "undeploy":
            gone = [kind for kind in ("Deployment", "Service", "Secret")
                    if api.delete(kind, ns, name if kind != "Secret" else secret_name(job))]  # fmt: skip
            log(f"service {name}: undeployed ({', '.join(gone) or 'nothing was deployed'})")
            return {"service": name, "namespace": ns, "deleted": gone}
        try:
            for doc in docs:
                log(f"{doc['kind']} {doc['metadata']['name']}: {api.apply(doc)}")
        except Exception as e:
            raise ServiceError(f"the API server refused the {doc['kind']}: {_api_error(e)}") from e
        revision = deployment["metadata"]["annotations"][REVISION_ANNOTATION]
        self._wait_rollout(api, ns, name, w.replicas, revision, log)
        return {"service": name, "namespace": ns, "revision": revision, "replicas": w.replicas}

    def _wait_rollout(
        self, api: Api, ns: str, name: str, replicas: int, revision: str, log: Callable[[str], None]
    ) -> None:
        deadline = time.monotonic() + ROLLOUT_TIMEOUT_S
        said = ""
        while True:
            dep = _plain(api.apps.read_namespaced_deployment(name, ns))
            st = dep.get("status") or {}
            generation = (dep.get("metadata") or {}).get("generation")
            observed = st.get("observedGeneration")
            updated, available = st.get("updatedReplicas") or 0, st.get("availableReplicas") or 0
            progress = f"rollout of {name} ({revision}): {updated}/{replicas} updated, {available}/{replicas} available"
            if progress != said:
                log(progress)
                said = progress
            current = generation is None or (observed is not None and observed >= generation)
            if current and updated >= replicas and available >= replicas and (st.get("replicas") or 0) <= replicas:
                log(f"service {name}: {replicas}/{replicas} replicas available at revision {revision}")
                return
            for cond in st.get("conditions") or []:
                if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                    raise ServiceError(f"rollout of {name} stalled: {cond.get('message')}")
            problem = self._pod_problem(api, ns, name)
            if problem:
                raise ServiceError(f"rollout of {name} cannot finish: {problem}")
            if time.monotonic() > deadline:
                raise ServiceError(f"rollout of {name} did not finish in {ROLLOUT_TIMEOUT_S}s: {progress}")
            time.sleep(1)

    def _pod_problem(self, api: Api, ns: str, name: str) -> str | None:
        pods = _ours(_plain(api.core.list_namespaced_pod(ns, label_selector=f"{SERVICE_LABEL}={name}"))["items"],
                     **{SERVICE_LABEL: name})  # fmt: skip
        for p in pods:
            why = _pod_failure(p)
            if why:
                return f"pod {p['metadata']['name']}: {why}"
        return None


# --- status ----------------------------------------------------------------------------------
def _job_finished(job: dict[str, Any]) -> str | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed", "SuccessCriteriaMet",
                                                                 "FailureTarget"):  # fmt: skip
            return str(cond["type"])
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            return term
    return None


def _pod_failure(pod: dict[str, Any]) -> str | None:
    """Why this pod can never run, or None."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in NEVER_PULLS:
            return f"{waiting['reason']}: {waiting.get('message') or 'the image cannot be pulled'} (image {cs.get('image')})"
        if waiting.get("reason") == "CrashLoopBackOff":
            term = _terminated(pod) or {}
            return f"CrashLoopBackOff: the container keeps exiting (last exit code {term.get('exitCode')})"
    return None


def _job_status(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> JobStatus:
    if job is None:
        return JobStatus(JobState.LOST, message="the Job is gone (deleted outside Airflow, or removed after its TTL)")
    done = _job_finished(job)
    term = next((t for t in map(_terminated, pods) if t), None)
    code = term.get("exitCode") if term else None
    if done in ("Complete", "SuccessCriteriaMet"):
        return JobStatus(JobState.SUCCEEDED, code if code is not None else 0, "the Job completed")
    if done in ("Failed", "FailureTarget"):
        cond = next(c for c in job["status"]["conditions"] if c.get("type") in ("Failed", "FailureTarget"))
        if cond.get("reason") == "DeadlineExceeded":
            return JobStatus(
                JobState.TIMEOUT, code, "DeadlineExceeded: the Job ran past its timeout (activeDeadlineSeconds)"
            )
        if term and term.get("reason") == "OOMKilled":
            return JobStatus(
                JobState.FAILED, code, "OOMKilled: the container ran out of memory (raise resources.memory)"
            )
        detail = f"exit code {code}" if code is not None else (cond.get("message") or cond.get("reason") or "failed")
        return JobStatus(JobState.FAILED, code, f"the Job failed: {detail}")
    for p in pods:
        why = _pod_failure(p)
        if why:
            return JobStatus(JobState.FAILED, None, why)
    for p in pods:
        for cond in (p.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return JobStatus(JobState.PENDING, message=f"{cond.get('reason')}: {cond.get('message')}")
    if any((p.get("status") or {}).get("phase") == "Running" for p in pods):
        return JobStatus(JobState.RUNNING, message="running")
    return JobStatus(JobState.PENDING, message="pending: waiting for its pod")
