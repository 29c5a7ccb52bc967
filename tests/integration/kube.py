"""A Kubernetes API emulator for the tests, and a fake cluster that plays its controllers.

No kube-apiserver can be installed on our machines, so the kubernetes target is tested
against ``kmock``'s KubernetesEmulator: a real HTTP server on 127.0.0.1 with an in-memory
object store that the official client (through the provider's KubernetesHook) talks to.
It has no controllers, so :class:`FakeCluster` plays them — the Job controller and kubelet
(Job → Pod → Running → Succeeded/Failed, logs), the Deployment controller (pods, rollout
status) and the scheduler's "Unschedulable" — driven by a behaviour per spec name. Like an
API server and unlike plain kmock, ``metadata.generation`` is bumped on every write to a
Deployment, so rollout waits can tell an old status from a new one.

The tests record every object the backend sends and validate it with ``kubernetes-validate``
(strict) for several Kubernetes versions, plus the server-side rules the schema misses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
from kmock._internal import enums

RESOURCES = ("batch/v1/jobs", "v1/pods", "v1/secrets", "v1/services", "apps/v1/deployments", "v1/events",
             "v1/persistentvolumeclaims")  # fmt: skip


class ApiServer(kmock.KubernetesEmulator):
    """The emulator plus what a real API server does on writes: generation bumps."""

    async def _handle(self, request: Any) -> Any:
        response = await super()._handle(request)
        res = request.resource
        if res is not None and getattr(res, "plural", None) == "deployments" and request.subresource is None:
            if request.action in (enums.action.CREATE, enums.action.UPDATE):
                name = request.name or (request.data or {}).get("metadata", {}).get("name")
                ns = request.namespace or (request.data or {}).get("metadata", {}).get("namespace")
                async with self._lock:
                    for (r, n, nm), obj in self._objects.items():
                        if r == res and n == ns and nm == name and not obj.deleted:
                            gen = int(obj.get("metadata", {}).get("generation") or 0) + 1
                            obj.patch({"metadata": {"generation": gen}})
        return response


def _instant(stamp: str) -> tuple[str, int]:
    """An RFC 3339 time as (whole seconds, nanoseconds), for comparing."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return whole, int(f"{fraction:0<9}"[:9])


@dataclass
class Behaviour:
    """What the fake kubelet does with the pods of one spec (by its flexorch.io/name label)."""

    log: list[str] = field(default_factory=list)
    exit_code: int | None = 0  # None: keep running until deleted
    run_for: float = 0.3
    waiting_reason: str | None = None  # e.g. ErrImagePull
    unschedulable: str | None = None  # the scheduler's message
    oom: bool = False
    ready: bool = True  # services: pods become ready
    hold: bool = False  # services: the Deployment controller does not act until released
    pods: bool = False  # services: the Deployment controller also runs the replicas' pods (ready, logging ``log``)
    evict: str | None = (
        None  # the cluster ends the pods of the first ``evictions`` Jobs, with this DisruptionTarget reason
    )
    evictions: int = 1
    evicted: list[str] = field(default_factory=list)  # the Jobs whose pods it ended


class FakeCluster:
    """The emulator on a port in a background thread, and the controllers in another."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.behaviours: dict[str, Behaviour] = {}
        self.logs: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (ns, pod) → [(RFC 3339 time, line)]
        self.log_queries: list[dict[str, str]] = []  # the query of every pod log request
        self.fixed_stamp: str | None = None  # when set, every new log line gets this timestamp
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.url = ""
        threading.Thread(target=self._serve, daemon=True, name="kmock").start()
        if not self._ready.wait(20):
            raise RuntimeError("the Kubernetes emulator did not start")
        self.kubeconfig = base / "kubeconfig"
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: emu\n"
            f"clusters: [{{name: emu, cluster: {{server: '{self.url}'}}}}]\n"
            "contexts: [{name: emu, context: {cluster: emu, user: emu}}]\nusers: [{name: emu, user: {}}]\n"
        )
        from kubernetes import client, config

        self.api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self._started: dict[str, float] = {}
        threading.Thread(target=self._controllers, daemon=True, name="fake-controllers").start()

    # --- the API server ---------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per request otherwise

        async def main() -> None:
            async with ApiServer() as emulator, kmock.Server(emulator) as server:
                self.emulator = emulator
                for r in RESOURCES:
                    emulator.resources[r]  # declared: lists work before the first object exists
                emulator[kmock.resource("v1/pods"), kmock.subresource("log")] << self._pod_log
                self.url = str(server.url).rstrip("/")
                self._ready.set()
                while not self._stop.is_set():
                    await asyncio.sleep(0.1)

        self._loop.run_until_complete(main())

    def _pod_log(self, request: Any) -> bytes:
        """As the kubelet answers: ``timestamps=true`` puts each line's time (RFC 3339, trailing
        zeros trimmed) before it; ``sinceTime`` keeps lines logged at or after that time."""
        query = dict(request.params or {})
        self.log_queries.append(query)
        since = _instant(query["sinceTime"]) if query.get("sinceTime") else None
        out = []
        for stamp, line in list(self.logs.get((request.namespace, request.name), [])):
            if since is not None and _instant(stamp) < since:
                continue
            out.append(f"{stamp} {line}\n" if query.get("timestamps") == "true" else f"{line}\n")
        return "".join(out).encode()

    def _stamp(self) -> str:
        if self.fixed_stamp is not None:
            return self.fixed_stamp
        now = time.time()
        fraction = f"{int(now % 1 * 1e9):09d}".rstrip("0")
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + (f".{fraction}" if fraction else "") + "Z"

    def stop(self) -> None:
        self._stop.set()

    # --- the controllers ---------------------------------------------------------------------
    def _controllers(self) -> None:
        while not self._stop.is_set():
            try:
                self._jobs()
                self._deployments()
            except Exception as e:  # a test will time out with this in its output
                print(f"fake controllers: {e!r}")
            time.sleep(0.1)

    def _behaviour(self, labels: dict[str, str]) -> Behaviour:
        return self.behaviours.get(labels.get("flexorch.io/name", ""), Behaviour())

    def _jobs(self) -> None:
        jobs = self.api_client.sanitize_for_serialization(self.batch.list_job_for_all_namespaces())["items"]
        pods = self.api_client.sanitize_for_serialization(self.core.list_pod_for_all_namespaces())["items"]
        names = {(j["metadata"]["namespace"], j["metadata"]["name"]) for j in jobs}
        for p in pods:  # garbage collection: pods of deleted Jobs go too
            owner = (p["metadata"].get("labels") or {}).get("job-name")
            if owner and (p["metadata"]["namespace"], owner) not in names:
                self.core.delete_namespaced_pod(p["metadata"]["name"], p["metadata"]["namespace"])
        for j in jobs:
            ns, name = j["metadata"]["namespace"], j["metadata"]["name"]
            if any(c.get("status") == "True" for c in (j.get("status") or {}).get("conditions") or []):
                continue
            labels = j["spec"]["template"]["metadata"]["labels"]
            b = self._behaviour(labels)
            pod_name = f"{name}-pod0"
            if not any(p["metadata"]["name"] == pod_name for p in pods):
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": pod_name, "namespace": ns,
                                    "labels": {**labels, "job-name": name, "batch.kubernetes.io/job-name": name}},
                       "spec": j["spec"]["template"]["spec"]}  # fmt: skip
                self.core.create_namespaced_pod(ns, pod)
                self._started[pod_name] = time.monotonic()
                self._set_pod(ns, pod_name, b, running=False)
                continue
            age = time.monotonic() - self._started.get(pod_name, time.monotonic())
            if b.unschedulable or b.waiting_reason:
                continue
            if age < b.run_for or b.exit_code is None:
                self._set_pod(ns, pod_name, b, running=True)
                continue
            if b.evict and (name in b.evicted or len(b.evicted) < b.evictions):
                if name not in b.evicted:
                    b.evicted.append(name)
                self._evict(ns, name, pod_name, b)
                continue
            self._set_pod(ns, pod_name, b, running=False, finished=True)
            failed = b.exit_code != 0 or b.oom
            cond = {"type": "Failed" if failed else "Complete", "status": "True",
                    "reason": "BackoffLimitExceeded" if failed else "Completed"}  # fmt: skip
            self.batch.patch_namespaced_job_status(name, ns, {"status": {"conditions": [cond]}})

    def _evict(self, ns: str, job: str, pod: str, b: Behaviour) -> None:
        """As Kubernetes ends a pod it evicts (a drain), preempts or loses with its node: the DisruptionTarget
        condition, the container killed (143), and the Job failed (backoffLimit 0)."""
        records = self.logs.setdefault((ns, pod), [])
        records.extend((self._stamp(), line) for line in b.log[len(records) :])
        term = {"exitCode": 143, "reason": "Error"}
        self.core.patch_namespaced_pod_status(pod, ns, {"status": {"phase": "Failed",
            "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": b.evict,
                            "message": "Eviction API: evicting"}],
            "containerStatuses": [{"name": "main", "image": "x", "ready": False, "restartCount": 0, "imageID": "",
                                   "state": {"terminated": term}}]}})  # fmt: skip
        cond = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
        self.batch.patch_namespaced_job_status(job, ns, {"status": {"conditions": [cond]}})

    def _replica_pods(self, d: dict[str, Any], gen: int, replicas: int, b: Behaviour) -> None:
        """The pods of one Deployment generation, running, ready and logging; older ones deleted."""
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        template = d["spec"]["template"]
        prefix = f"{name}-{gen}-"
        for p in self.core.list_namespaced_pod(ns).items:
            labels = p.metadata.labels or {}
            if labels == template["metadata"]["labels"] and not p.metadata.name.startswith(prefix):
                self.core.delete_namespaced_pod(p.metadata.name, ns)
        for i in range(replicas):
            pod_name = f"{prefix}{i}"
            self.core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns, "labels": template["metadata"]["labels"],
                             "annotations": template["metadata"].get("annotations") or {}},
                "spec": {**template["spec"], "nodeName": f"node-{i}"}})  # fmt: skip
            self.core.patch_namespaced_pod_status(pod_name, ns, {"status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}})  # fmt: skip
            self.logs[(ns, pod_name)] = [(self._stamp(), line.replace("{i}", str(i))) for line in b.log]

    def _set_pod(self, ns: str, name: str, b: Behaviour, running: bool, finished: bool = False) -> None:
        if b.unschedulable:
            status = {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": b.unschedulable}]}  # fmt: skip
        elif b.waiting_reason:
            status = {"phase": "Pending", "containerStatuses": [{"name": "main", "image": "x", "ready": False,
                      "restartCount": 0, "imageID": "", "state": {"waiting": {"reason": b.waiting_reason,
                      "message": f"{b.waiting_reason} for the image"}}}]}  # fmt: skip
        elif finished:
            code = 137 if b.oom else b.exit_code
            term = {"exitCode": code, "reason": "OOMKilled" if b.oom else ("Completed" if code == 0 else "Error")}
            status = {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
                {"name": "main", "image": "x", "ready": False, "restartCount": 0, "imageID": "",
                 "state": {"terminated": term}}]}  # fmt: skip
        else:
            status = {"phase": "Running" if running else "Pending"}
        if running or finished:
            records = self.logs.setdefault((ns, name), [])
            records.extend((self._stamp(), line) for line in b.log[len(records) :])
        self.core.patch_namespaced_pod_status(name, ns, {"status": status})

    def _deployments(self) -> None:
        deps = self.api_client.sanitize_for_serialization(self.apps.list_deployment_for_all_namespaces())["items"]
        for d in deps:
            ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
            gen = d["metadata"].get("generation") or 1
            st = d.get("status") or {}
            if st.get("observedGeneration") == gen:
                continue
            labels = d["spec"]["template"]["metadata"]["labels"]
            b = self._behaviour(labels)
            if b.hold:
                continue
            replicas = d["spec"]["replicas"]
            pod_name = f"{name}-{gen}-pod"
            if b.waiting_reason:
                pods = self.core.list_namespaced_pod(ns).items
                if not any(p.metadata.name == pod_name for p in pods):
                    self.core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod_name, "namespace": ns, "labels": labels},
                        "spec": d["spec"]["template"]["spec"]})  # fmt: skip
                    self._set_pod(ns, pod_name, b, running=False)
                continue
            time.sleep(0.3)  # a rollout takes a moment
            ready = replicas if b.ready else 0
            if b.pods:
                self._replica_pods(d, gen, replicas, b)
            self.apps.patch_namespaced_deployment_status(name, ns, {"status": {
                "observedGeneration": gen, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": ready, "availableReplicas": ready}})  # fmt: skip
