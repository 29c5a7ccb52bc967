"""``KubernetesBackend``: the backend contract on top of manifests, the Api boundary and status.

- submit: reattaches to a live Job of the same run key instead of creating a second one; a
  live Job whose pod can never start (reported FAILED by poll) is deleted first, and the next
  attempt gets a fresh name. Errors are ``SubmitError`` (the operator tries the next target).
- poll: one Job list and one Pod list per (connection, namespace) for every followed Job.
  It only reports: a Job that can never pull its image is FAILED with the reason, and stays
  until ``cancel`` (or a resubmit of its run key) deletes it.
- read_logs: the rank-0 pod's log from a byte offset (:mod:`.logs`).
- cancel: delete the Job (background propagation), its headless Service and its Secret.
- service: apply Deployment (+ Service with a port) and wait for the rollout with progress in
  the task log; undeploy deletes both. Kubernetes restores replicas itself (no reconcile).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypedDict

from flexorch_provider.backends.base import Backend, JobHandle, JobStatus, LogChunk, LogCursor, ResolvedJob
from flexorch_provider.backends.kubernetes.api import Api, ApiError
from flexorch_provider.backends.kubernetes.logs import read_pod_log
from flexorch_provider.backends.kubernetes.manifests import (
    CLAIMED_ANNOTATION,
    MANAGED,
    REVISION_ANNOTATION,
    RUN_LABEL,
    SERVICE_LABEL,
    job_manifests,
    manifests,
    ours,
    registry_secret_name,
    secret_data,
    secret_name,
    service_manifests,
)
from flexorch_provider.backends.kubernetes.status import job_finished, job_status, never_starts, pod_failure, pods_of
from flexorch_provider.exceptions import BackendError, ServiceError, SubmitError

ROLLOUT_TIMEOUT_S = 600


def unclaimed_ends(jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest ended Job of a run key that no try claimed (its worker died before recording
    it), when the order is known: the only one, or by creation time."""
    ended = [j for j in jobs if job_finished(j) is not None
             and not (j["metadata"].get("annotations") or {}).get(CLAIMED_ANNOTATION)]  # fmt: skip
    if len(ended) == 1:
        return ended[0]
    if ended and all(j["metadata"].get("creationTimestamp") for j in ended):
        return max(ended, key=lambda j: str(j["metadata"]["creationTimestamp"]))
    return None


class KubernetesJobData(TypedDict):
    """What a kubernetes :class:`JobHandle` carries in ``data`` (the operator may add keys of its own)."""

    conn: str  # the Airflow connection id
    namespace: str
    secret: str | None  # the run's Secret of values resolved from Airflow, deleted with the Job
    registry_secret: str | None  # the run's image pull Secret (container.registry_connection), deleted with it
    nodes: int  # > 1: an Indexed Job with a headless Service of the same name


def job_data(handle: JobHandle) -> KubernetesJobData:
    """The handle's data, typed (handles from before ``nodes``/``secret`` existed read as 1/None)."""
    d = handle.data
    try:
        return KubernetesJobData(conn=str(d["conn"]), namespace=str(d["namespace"]),
                                 secret=d.get("secret") or None, nodes=int(d.get("nodes") or 1),
                                 registry_secret=d.get("registry_secret") or None)  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        raise BackendError(f"job {handle.job_id} has no kubernetes handle data ({e!r} missing or invalid)") from e


def delete_job(api: Api, ns: str, name: str, data: KubernetesJobData) -> None:
    """Delete a run's Job with its headless Service and Secret (missing ones are fine)."""
    api.delete("Job", ns, name)
    if data["nodes"] > 1:
        api.delete("Service", ns, name)  # the headless Service of an Indexed Job
    for secret in (data["secret"], data.get("registry_secret")):
        if secret:
            api.delete("Secret", ns, secret)


class KubernetesBackend(Backend):
    name = "kubernetes"

    def gpu_pool(self, workload: Any) -> Any:
        from flexorch_provider.inventory.pools import KubernetesPool

        k = workload.kubernetes
        return KubernetesPool(
            name="kubernetes",
            source="kubernetes",
            connection=k.connection,
            gpu_label=k.gpu_label,
            node_selector=dict(k.node_selector),
        )

    def render(self, job: ResolvedJob) -> str:
        import yaml

        docs = manifests(job)
        for d in docs:
            if d["kind"] == "Secret":
                d["stringData"] = {k: "<secret>" for k in d["stringData"]}
        w = job.workload
        head = f"# kubernetes: connection {w.kubernetes.connection!r}, namespace {w.kubernetes.namespace!r}\n"
        if job.code is not None and job.code.git is not None:
            head += (f"# code: each pod's init container fetches {job.code.git.url} at {job.code.git.commit} "
                     f"(the {job.code.summary()} the other targets get)\n")  # fmt: skip
        return head + yaml.safe_dump_all(docs, sort_keys=False)

    def batch_key(self, handle: JobHandle) -> str:
        data = job_data(handle)
        return f"kubernetes:{data['conn']}:{data['namespace']}"

    def where(self, handle: JobHandle) -> dict[str, Any]:
        data = job_data(handle)
        return {"summary": f"Kubernetes Job {data['namespace']}/{handle.job_id} (connection {data['conn']})",
                "namespace": data["namespace"], "job_name": handle.job_id, "conn": data["conn"]}  # fmt: skip

    def _data(self, job: ResolvedJob) -> KubernetesJobData:
        w = job.workload
        return KubernetesJobData(conn=w.kubernetes.connection, namespace=w.kubernetes.namespace,
                                 secret=secret_name(job) if secret_data(job) else None,
                                 nodes=int(w.resources.nodes),
                                 registry_secret=registry_secret_name(job) if w.image and w.container.registry_connection
                                 else None)  # fmt: skip

    def _handle(self, job: ResolvedJob, name: str) -> JobHandle:
        return JobHandle(self.name, name, job.run_key, dict(self._data(job)))

    @staticmethod
    def _attempts(api: Api, ns: str, job: ResolvedJob) -> tuple[list[Any], list[Any], list[Any]]:
        """This run key's Jobs in ``ns``: all of them, the live ones, and the live ones' pods."""
        selector = f"{RUN_LABEL}={job.key_slug}"
        mine = ours(api.list_jobs(ns, selector), **{RUN_LABEL: job.key_slug})
        live = [j for j in mine if job_finished(j) is None]
        pods = ours(api.list_pods(ns, selector), **{RUN_LABEL: job.key_slug}) if live else []
        return mine, live, pods

    def find(self, job: ResolvedJob) -> JobHandle | None:
        data = self._data(job)
        _, live, pods = self._attempts(Api(data["conn"]), data["namespace"], job)
        for item in live:
            name = item["metadata"]["name"]
            if not never_starts(item, job_status(item, pods_of(name, pods))):
                return self._handle(job, name)
        return None

    def submit(self, job: ResolvedJob) -> JobHandle:
        data = self._data(job)
        ns = data["namespace"]
        try:
            api = Api(data["conn"])
        except ApiError as e:
            raise SubmitError(str(e)) from e
        try:
            mine, live, pods = self._attempts(api, ns, job)
        except ApiError as e:
            raise SubmitError(f"cannot list Jobs in namespace {ns!r}: {e}") from e
        for item in live:
            name = item["metadata"]["name"]
            if not never_starts(item, job_status(item, pods_of(name, pods))):
                return self._handle(job, name)  # reattach: never a second Job per run key
            try:  # an attempt poll reported failed (it can never start): the next attempt replaces it
                indexed = (item.get("spec") or {}).get("completionMode") == "Indexed"
                delete_job(
                    api, ns, name, {**data, "secret": None, "registry_secret": None, "nodes": 2 if indexed else 1}
                )
            except ApiError as e:
                raise SubmitError(f"cannot delete the previous attempt, Job {name}: {e}") from e
        claim = job.workload.kubernetes.checkpoint_claim if job.workload.checkpoint_dir else None
        if claim:  # a pod on a missing claim would wait unscheduled, saying nothing to the task log
            try:
                phase = (api.read_claim(ns, claim).get("status") or {}).get("phase")
            except ApiError as e:
                if e.status == 404:
                    raise SubmitError(
                        f"kubernetes.checkpoint_claim: there is no PersistentVolumeClaim {claim!r} in namespace "
                        f"{ns!r}: create it (ReadWriteMany for multi-node jobs), or fix the name"
                    ) from None
                raise SubmitError(f"cannot read PersistentVolumeClaim {claim!r} in namespace {ns!r}: {e}") from e
            if phase == "Lost":
                raise SubmitError(f"PersistentVolumeClaim {claim!r} in namespace {ns!r} lost its volume (phase Lost)")
        notes: list[str] = []
        ended = unclaimed_ends(mine)
        if ended is not None:
            name, how = ended["metadata"]["name"], job_finished(ended)
            if how in ("Complete", "SuccessCriteriaMet"):
                return replace(
                    self._handle(job, name),
                    notes=[f"Job {name} had already succeeded, but no earlier try recorded it (its worker died): "
                           "taking its result and log instead of running it again"],
                )  # fmt: skip
            notes.append(f"the previous try's Job {name} ended {how} without its outcome reaching Airflow: "
                         "running it again")  # fmt: skip
        # a fresh name per attempt: a deleted Job may linger (finalizers) and block its name
        docs = job_manifests(job, attempt=secrets.token_hex(2))
        try:
            for doc in docs:
                if doc["kind"] == "Secret":
                    api.apply(doc)
                else:
                    api.create(doc)
        except ApiError as e:
            raise SubmitError(f"the API server refused the {doc['kind']}: {e}") from e
        return replace(self._handle(job, docs[-1]["metadata"]["name"]), notes=notes)

    def claim(self, handle: JobHandle) -> None:
        data = job_data(handle)
        try:
            Api(data["conn"]).annotate_job(data["namespace"], handle.job_id, {CLAIMED_ANNOTATION: "true"})
        except ApiError as e:
            if e.status != 404:  # a Job already deleted (cancelled, cleaned up) needs no mark
                raise BackendError(f"cannot mark Job {handle.job_id} recorded: {e}") from e

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """Status only, no side effects: a Job whose pod can never start is FAILED with ``release``
        set, and its follower cancels it (the task's retry would replace it too)."""
        groups: dict[tuple[str, str], list[JobHandle]] = {}
        for h in handles:
            data = job_data(h)
            groups.setdefault((data["conn"], data["namespace"]), []).append(h)
        out: dict[str, JobStatus] = {}
        selector = ",".join(f"{k}={v}" for k, v in MANAGED.items())
        for (conn, ns), group in groups.items():
            api = Api(conn)
            try:
                jobs = {j["metadata"]["name"]: j for j in ours(api.list_jobs(ns, selector))}
                pods = ours(api.list_pods(ns, selector))
            except ApiError as e:
                raise BackendError(f"cannot list Jobs/Pods in namespace {ns!r}: {e}") from e
            for h in group:
                job = jobs.get(h.job_id)
                status = job_status(job, pods_of(h.job_id, pods))
                if job is not None and never_starts(job, status):  # still holds its node's resources
                    status = replace(status, release=True)
                out[h.job_id] = status
        return out

    def read_logs(self, handle: JobHandle, cursor: LogCursor) -> LogChunk:
        start = cursor if isinstance(cursor, int) else 0
        data = job_data(handle)
        ns = data["namespace"]
        api = Api(data["conn"])
        try:
            pods = ours(api.list_pods(ns, f"job-name={handle.job_id}"))
            pods = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == handle.job_id]
            if not pods:
                return LogChunk([], start)
            pods.sort(key=lambda p: (p["metadata"].get("annotations") or {}).get(
                "batch.kubernetes.io/job-completion-index", "0"))  # fmt: skip
            return read_pod_log(api, data["conn"], ns, pods[0]["metadata"]["name"], start)
        except ApiError as e:
            if e.status in (400, 404):
                return LogChunk([], start)  # not started yet, or gone
            raise BackendError(f"cannot read the log of job {handle.job_id}: {e}") from e

    def cancel(self, handle: JobHandle) -> None:
        data = job_data(handle)
        api = Api(data["conn"])
        try:
            delete_job(api, data["namespace"], handle.job_id, data)
        except ApiError as e:
            raise BackendError(f"could not delete Job {handle.job_id}: {e}") from e

    # --- services ------------------------------------------------------------------------
    def service(self, job: ResolvedJob, log: Callable[[str], None]) -> dict[str, Any]:
        w = job.service
        ns = w.kubernetes.namespace
        try:
            api = Api(w.kubernetes.connection)
        except ApiError as e:  # no client: this target cannot take the service at all
            raise SubmitError(str(e)) from e
        docs = service_manifests(job)
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        name = deployment["metadata"]["name"]
        if job.action == "undeploy":
            try:
                named = [("Deployment", name), ("Service", name), ("Secret", secret_name(job)),
                         ("Secret", registry_secret_name(job))]  # fmt: skip
                gone = [kind for kind, n in named if api.delete(kind, ns, n)]
            except ApiError as e:
                raise ServiceError(f"could not undeploy service {name}: {e}") from e
            log(f"service {name}: undeployed ({', '.join(gone) or 'nothing was deployed'})")
            return {"service": name, "namespace": ns, "deleted": gone}
        try:
            for doc in docs:
                log(f"{doc['kind']} {doc['metadata']['name']}: {api.apply(doc)}")
        except ApiError as e:
            raise ServiceError(f"the API server refused the {doc['kind']}: {e}") from e
        revision = deployment["metadata"]["annotations"][REVISION_ANNOTATION]
        wait_rollout(api, ns, name, job.replica_count, revision, log)
        return {"service": name, "namespace": ns, "revision": revision, "replicas": job.replica_count}

    def _service_pods(self, job: ResolvedJob) -> tuple[Api, str, str, list[dict[str, Any]]]:
        w = job.service
        ns = w.kubernetes.namespace
        api = Api(w.kubernetes.connection)
        name = next(d for d in service_manifests(job) if d["kind"] == "Deployment")["metadata"]["name"]
        try:
            pods = ours(api.list_pods(ns, f"{SERVICE_LABEL}={name}"), **{SERVICE_LABEL: name})
        except ApiError as e:
            raise BackendError(f"service {name}: cannot list its pods: {e}") from e
        live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
        return api, ns, name, sorted(live, key=lambda p: p["metadata"]["name"])

    def service_status(self, job: ResolvedJob, metric: dict[str, Any] | None = None) -> dict[str, Any]:
        api, ns, name, pods = self._service_pods(job)
        try:
            dep = api.read_deployment(ns, name)
        except ApiError as e:
            if e.status == 404:
                dep = {}
            else:
                raise BackendError(f"service {name}: cannot read its Deployment: {e}") from e
        replicas = []
        for slot, p in enumerate(pods):
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (p.get("status") or {}).get("conditions") or [])  # fmt: skip
            meta = p.get("metadata") or {}
            replicas.append({"slot": slot, "host": f"pod {meta['name']} on {(p.get('spec') or {}).get('nodeName') or '(unscheduled)'}",
                             "pod": meta["name"], "node": (p.get("spec") or {}).get("nodeName"),
                             "revision": (meta.get("annotations") or {}).get(REVISION_ANNOTATION, ""),
                             "state": str((p.get("status") or {}).get("phase", "")).lower(), "healthy": ready,
                             "detail": pod_failure(p) or ""})  # fmt: skip
        spec, st = dep.get("spec") or {}, dep.get("status") or {}
        revision = ((dep.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION)
        # the Deployment's own counts: its controller's word, pods being created or deleted aside
        return {"service": name, "namespace": ns, "desired": spec.get("replicas", job.service.replicas),
                "running": st.get("replicas") or 0, "healthy": st.get("readyReplicas") or 0,
                "revisions": sorted({r["revision"] for r in replicas if r["revision"]} or ({revision} if revision else set())),
                "deployed": bool(dep), "replicas": replicas, "unreachable": {}}  # fmt: skip

    def service_logs(
        self, job: ResolvedJob, slot: int | None = None, cursors: dict[str, int] | None = None, tail: int = 50
    ) -> dict[str, Any]:
        api, ns, name, pods = self._service_pods(job)
        cursors = cursors or {}
        out = []
        for i, p in enumerate(pods):
            pod = p["metadata"]["name"]
            if slot is not None and i != slot:
                continue
            row: dict[str, Any] = {"slot": i, "host": f"pod {pod}", "run_dir": pod, "state": "", "revision": ""}
            try:
                chunk = read_pod_log(api, job.service.kubernetes.connection, ns, pod, int(cursors.get(pod, 0)))
                lines = chunk.lines if pod in cursors else chunk.lines[-tail:]
                row.update(lines=lines, cursor=chunk.cursor)
            except (ApiError, BackendError) as e:
                row.update(lines=[], cursor=cursors.get(pod), error=str(e).splitlines()[0][:300])
            out.append(row)
        return {"service": name, "replicas": out, "unreachable": {}}


# --- rollout ---------------------------------------------------------------------------------
def wait_rollout(api: Api, ns: str, name: str, replicas: int, revision: str, log: Callable[[str], None]) -> None:
    """Until the Deployment's current generation has ``replicas`` updated, available replicas;
    ``ServiceError`` when it stalls, a pod can never run, time runs out or the API fails."""
    deadline = time.monotonic() + ROLLOUT_TIMEOUT_S
    said = ""
    while True:
        try:
            dep = api.read_deployment(ns, name)
        except ApiError as e:
            raise ServiceError(f"rollout of {name}: cannot read the Deployment: {e}") from e
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
        problem = pod_problem(api, ns, name)
        if problem:
            raise ServiceError(f"rollout of {name} cannot finish: {problem}")
        if time.monotonic() > deadline:
            raise ServiceError(f"rollout of {name} did not finish in {ROLLOUT_TIMEOUT_S}s: {progress}")
        time.sleep(1)


def pod_problem(api: Api, ns: str, name: str) -> str | None:
    """Why a pod of service ``name`` can never run, or None."""
    try:
        pods = ours(api.list_pods(ns, f"{SERVICE_LABEL}={name}"), **{SERVICE_LABEL: name})
    except ApiError as e:
        raise ServiceError(f"rollout of {name}: cannot list its pods: {e}") from e
    for p in pods:
        why = pod_failure(p)
        if why:
            return f"pod {p['metadata']['name']}: {why}"
    return None
