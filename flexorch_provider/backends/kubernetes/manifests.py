"""Manifests: pure data, from a resolved job to the objects the API server is sent.

Also what ``flexorch render --target kubernetes`` prints. Jobs: restartPolicy Never and
backoffLimit 0 (retries are Airflow's), activeDeadlineSeconds from the timeout,
ttlSecondsAfterFinished, GPUs as ``nvidia.com/gpu`` limits and the GPU model as a node
selector on ``kubernetes.gpu_label``; ``nodes > 1`` → an Indexed Job with a headless Service
so rank 0 has a stable address. Secrets resolved from Airflow go into a Secret next to the
Job (never into the Job spec); ``kubernetes:`` secrets are referenced where they are.
Services: a Deployment (+ a Service with a port), probes from ``health``, rolling parameters
from ``update``, and a revision annotation hashed from the pod template.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
import signal
from typing import Any

from flexorch_provider import multinode
from flexorch_provider.backends.base import ResolvedJob, checkpoint_dir
from flexorch_provider.exceptions import ConfigurationError
from flexorch_provider.runner.containers import auth_json
from flexorch_provider.runner.supervisor import warn_script

MANAGED = {"app.kubernetes.io/managed-by": "flexorch"}
RUN_LABEL = "flexorch.io/run"
NAME_LABEL = "flexorch.io/name"
SERVICE_LABEL = "flexorch.io/service"
RUN_KEY_ANNOTATION = "flexorch.io/run-key"
REVISION_ANNOTATION = "flexorch.io/revision"
CLAIMED_ANNOTATION = "flexorch.io/claimed"  # on a Job whose outcome reached Airflow
TTL_AFTER_FINISHED = 24 * 3600
CONTAINER = "main"
PULL_POLICIES = {"always": "Always", "missing": "IfNotPresent", "never": "Never"}


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` as a DNS-1123 label (lower case, ``-`` for anything else, at most ``limit`` characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].rstrip("-")
    return name or "flexorch"


def _labels(job: ResolvedJob, **extra: str) -> dict[str, str]:
    opts = job.workload.kubernetes
    return {**opts.labels, **MANAGED, NAME_LABEL: dns_label(job.name), **extra}


def _quantity_memory(size: int) -> str:
    return f"{math.ceil(size / 2**20)}Mi"


def _quantity_cpu(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{math.ceil(cpus * 1000)}m"


KILL_GRACE_S = 10  # after SIGTERM, before SIGKILL (as the job runner's kill_grace)


def _command(job: ResolvedJob) -> list[str]:
    """The container's command: setup (failing fast) then run; user text only as argv items. With a
    warning signal the shell keeps running through it (``trap :``), as on every other target."""
    w = job.workload
    if w.warn_before is not None and not isinstance(job.run, list):
        keep = f"trap : {w.warn_before.signal}\n"
        script = job.run if not job.setup else "(set -e\n" + job.setup + "\n) || exit $?\n" + job.run
        return ["/bin/sh", "-c", keep + script]
    if isinstance(job.run, list):
        if not job.setup:
            return list(job.run)
        return ["/bin/sh", "-c", "(set -e\n" + job.setup + '\n) || exit $?\nexec "$@"', "sh", *job.run]
    script = job.run if not job.setup else "(set -e\n" + job.setup + "\n) || exit $?\n" + job.run
    return ["/bin/sh", "-c", script]


def airflow_secrets(job: ResolvedJob) -> dict[str, str]:
    """Secret values resolved from Airflow (Kubernetes secrets are referenced, not copied)."""
    return {k: v for k, v in job.secrets.items() if k in job.workload.airflow_secrets}


def secret_data(job: ResolvedJob) -> dict[str, str]:
    """The run's (or service's) Secret: the values resolved from Airflow, and code.git's token."""
    git = job.code.git if job.code is not None else None
    return {**airflow_secrets(job), **({GIT_TOKEN_KEY: git.token} if git and git.token else {})}


CODE_MOUNT = "/flexorch/code"
GIT_TOKEN_KEY = "FLEXORCH_GIT_TOKEN"  # in the run's Secret; only the init container reads it
# the init container: the commit the task resolved (by its name when the server will not give a commit
# by id), checked out; no value is ever part of the script (they come as environment variables)
FETCH_SCRIPT = r"""set -e
cd /flexorch/code && git init -q repo && cd repo
if [ -n "${FLEXORCH_GIT_TOKEN:-}" ]; then
  set -- -c credential.helper= -c 'credential.helper=!f() { echo "username=$FLEXORCH_GIT_USER"; echo "password=$FLEXORCH_GIT_TOKEN"; }; f'
fi
git "$@" fetch -q --depth 1 --no-tags -- "$FLEXORCH_GIT_URL" "$FLEXORCH_GIT_COMMIT" 2>/dev/null ||
  git "$@" fetch -q --depth 1 --no-tags -- "$FLEXORCH_GIT_URL" "$FLEXORCH_GIT_REF"
git checkout -q --detach FETCH_HEAD
if [ "$(git rev-parse HEAD)" != "$FLEXORCH_GIT_COMMIT" ]; then
  echo "[flexorch] $FLEXORCH_GIT_REF of $FLEXORCH_GIT_URL is no longer $FLEXORCH_GIT_COMMIT (it moved since the task started)" >&2
  exit 1
fi
"""


def _code_from_git(job: ResolvedJob, pod: dict[str, Any], container: dict[str, Any]) -> None:
    """code.git: an init container fetches the commit into a volume the job's container starts in."""
    git = job.code.git if job.code is not None else None
    if git is None:
        return
    w = job.workload
    env: list[dict[str, Any]] = [
        {"name": "FLEXORCH_GIT_URL", "value": git.url},
        {"name": "FLEXORCH_GIT_REF", "value": (w.code.ref if w.code else None) or "HEAD"},
        {"name": "FLEXORCH_GIT_COMMIT", "value": git.commit},
    ]
    if git.token:
        env += [{"name": "FLEXORCH_GIT_USER", "value": git.user or "x-access-token"},
                {"name": GIT_TOKEN_KEY, "valueFrom": {"secretKeyRef": {"name": secret_name(job), "key": GIT_TOKEN_KEY}}}]  # fmt: skip
    mount = {"name": "flexorch-code", "mountPath": CODE_MOUNT}
    pod["volumes"] = [*pod.get("volumes", []), {"name": "flexorch-code", "emptyDir": {}}]
    pod["initContainers"] = [{"name": "flexorch-code", "image": w.kubernetes.git_image,
                              "command": ["/bin/sh", "-c", FETCH_SCRIPT], "env": env, "volumeMounts": [mount]}]  # fmt: skip
    code_dir = posixpath.normpath(posixpath.join(CODE_MOUNT, "repo", git.path))
    container["volumeMounts"] = [*container.get("volumeMounts", []), mount]
    container["workingDir"] = posixpath.join(code_dir, job.workdir) if job.workdir else code_dir
    container["env"] += [{"name": "FLEXORCH_CODE_DIR", "value": code_dir},
                         {"name": "FLEXORCH_CODE_COMMIT", "value": git.commit}]  # fmt: skip


def secret_name(job: ResolvedJob) -> str:
    """A run's own Secret; a service's is one per service (every deploy updates the same one)."""
    return dns_label(f"{job.name}-env" if job.is_service else f"{job.key_slug}-env")


def registry_secret_name(job: ResolvedJob) -> str:
    """The Secret with a private image's registry login (``container.registry_connection``), pulled with."""
    return dns_label(f"{job.name}-registry" if job.is_service else f"{job.key_slug}-registry")


def _registry_secret(job: ResolvedJob, labels: dict[str, str]) -> list[dict[str, Any]]:
    """The run's (or service's) image pull Secret, for a spec with a registry connection."""
    w = job.workload
    if not (w.image and w.container.registry_connection):
        return []
    login = auth_json(job.registry) if job.registry else json.dumps({"auths": {}})
    return [{"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
             "metadata": {"name": registry_secret_name(job), "namespace": w.kubernetes.namespace, "labels": labels},
             "stringData": {".dockerconfigjson": login}}]  # fmt: skip


def _env(job: ResolvedJob, extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    w = job.workload
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in {**job.env, **(extra or {})}.items()]
    env.append({"name": "FLEXORCH_RUN_KEY", "value": job.run_key})
    for key, ref in w.secrets.items():
        if not ref.read_by_airflow:
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key or key}}})
        elif key in airflow_secrets(job):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name(job), "key": key}}})
    return env


def _container(job: ResolvedJob, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    w = job.workload
    res = w.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpus:
        requests["cpu"] = _quantity_cpu(res.cpus)
    if res.memory:
        requests["memory"] = limits["memory"] = _quantity_memory(res.memory)
    if res.gpus and res.gpus.count:
        limits["nvidia.com/gpu"] = int(res.gpus.count)
    else:  # a CUDA image on a GPU node sees every GPU through the NVIDIA runtime unless told none
        extra_env = {**(extra_env or {}), "NVIDIA_VISIBLE_DEVICES": "void"}
    container: dict[str, Any] = {"name": CONTAINER, "image": w.image, "command": _command(job),
                                 "env": _env(job, extra_env)}  # fmt: skip
    if "pull" in w.container.model_fields_set:  # the spec's pull policy, as on every other target
        container["imagePullPolicy"] = PULL_POLICIES[w.container.pull]
    if job.workdir:
        container["workingDir"] = job.workdir
    if requests or limits:
        container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return container


def _pod_spec(job: ResolvedJob, container: dict[str, Any], restart: str) -> dict[str, Any]:
    w = job.workload
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
    if w.image and w.container.registry_connection:
        spec["imagePullSecrets"] = [{"name": registry_secret_name(job)}]
    _code_from_git(job, spec, container)
    _outlives_the_pod(job, spec, container)
    return spec


def _outlives_the_pod(job: ResolvedJob, pod: dict[str, Any], container: dict[str, Any]) -> None:
    """What a long job needs from its pod: the checkpoint claim (this run key's folder of it, at
    checkpoint_dir/<run key>), a sized /dev/shm, and the warning: a preStop hook that signals every
    process of the container and gives it ``before`` seconds, inside a grace period that covers them,
    so a cancel, an eviction, a preemption and (with activeDeadlineSeconds moved) the timeout warn."""
    w = job.workload
    volumes, mounts = [], []
    if w.checkpoint_dir and w.kubernetes.checkpoint_claim:
        where = checkpoint_dir(job)
        volumes.append({"name": "flexorch-checkpoints",
                        "persistentVolumeClaim": {"claimName": w.kubernetes.checkpoint_claim}})  # fmt: skip
        mounts.append({"name": "flexorch-checkpoints", "mountPath": where, "subPath": job.key_slug})
        container["env"] = [*container["env"], {"name": "FLEXORCH_CHECKPOINT_DIR", "value": where}]
    if w.resources.shm:
        volumes.append({"name": "flexorch-shm", "emptyDir": {"medium": "Memory",
                                                             "sizeLimit": _quantity_memory(w.resources.shm)}})  # fmt: skip
        mounts.append({"name": "flexorch-shm", "mountPath": "/dev/shm"})
    if volumes:
        pod["volumes"] = [*pod.get("volumes", []), *volumes]
        container["volumeMounts"] = [*container.get("volumeMounts", []), *mounts]
    if w.warn_before is not None:
        sig, before = w.warn_before.signal, warn_seconds(job)
        # every process of the container's PID namespace that handles it (the hook runs in it)
        hook = f"{warn_script(sig, int(getattr(signal, 'SIG' + sig)))}; sleep {before}"
        container["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", hook]}}}
        pod["terminationGracePeriodSeconds"] = before + KILL_GRACE_S


def warn_seconds(job: ResolvedJob) -> int:
    """warn_before.before in whole seconds (at least 1)."""
    assert job.workload.warn_before is not None
    return max(1, math.ceil(job.workload.warn_before.before.total_seconds()))


def job_manifests(job: ResolvedJob, attempt: str = "1") -> list[dict[str, Any]]:
    """A run's objects, in creation order: [Secret], [headless Service], Job (named ``<slug>-<attempt>``)."""
    w = job.workload
    if not w.image:
        raise ConfigurationError("the kubernetes target needs `image` in the spec (e.g. image: python:3.11-slim)")
    ns = w.kubernetes.namespace
    name = dns_label(f"{job.key_slug}-{attempt}")
    labels = _labels(job, **{RUN_LABEL: job.key_slug})
    meta = {"name": name, "namespace": ns, "labels": labels, "annotations": {RUN_KEY_ANNOTATION: job.run_key}}
    nodes = w.resources.nodes
    pod = _pod_spec(job, _container(job), "Never")
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if job.timeout_s:
        # with a warning, the Job's deadline is when it comes: its pod then stops (preStop: the signal, then
        # `before` seconds) and gets SIGTERM at the timeout itself
        warn = warn_seconds(job) if w.warn_before is not None else 0
        job_spec["activeDeadlineSeconds"] = max(1, job.timeout_s - warn)
    out: list[dict[str, Any]] = []
    if secret_data(job):
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret_name(job), "namespace": ns, "labels": labels},
                    "stringData": secret_data(job)})  # fmt: skip
    out += _registry_secret(job, labels)
    if nodes > 1:
        # the node rank is the completion index; pods resolve each other as <job>-<index>.<job>
        job_spec.update(completions=nodes, parallelism=nodes, completionMode="Indexed")
        pod["subdomain"] = name
        gpus = w.resources.gpus.count if w.resources.gpus else 0
        pod["containers"][0]["env"] += multinode.kubernetes_env(name, name, nodes, gpus)
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "annotations": {}},
                    "spec": {"clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": name}}})  # fmt: skip
    out.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec})
    return json.loads(json.dumps(out))  # no shared sub-objects (YAML aliases, surprises on mutation)


def service_manifests(job: ResolvedJob) -> list[dict[str, Any]]:
    """A service's objects, in apply order: [Secret], Deployment, [Service when it has a port]."""
    w = job.service
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
    if secret_data(job):
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret_name(job), "namespace": ns, "labels": labels},
                    "stringData": secret_data(job)})  # fmt: skip
    out += _registry_secret(job, labels)
    out.append({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": {REVISION_ANNOTATION: revision}},
        "spec": {"replicas": job.replica_count, "selector": {"matchLabels": selector}, "strategy": strategy,
                 "template": {"metadata": {"labels": labels, "annotations": {REVISION_ANNOTATION: revision}},
                              "spec": pod}},
    })  # fmt: skip
    if w.port:
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
                    "spec": {"selector": selector, "ports": [{"name": "http", "port": w.port,
                                                               "targetPort": "http"}]}})  # fmt: skip
    return json.loads(json.dumps(out))


def manifests(job: ResolvedJob) -> list[dict[str, Any]]:
    """What ``job`` becomes: a service's objects when it has an action, else a run's."""
    return service_manifests(job) if job.is_service else job_manifests(job)


def ours(items: list[dict[str, Any]], **labels: str) -> list[dict[str, Any]]:
    """Filter on labels ourselves too (a selector the server ignored must not widen what we act on)."""
    want = {**MANAGED, **labels}
    return [i for i in items if want.items() <= ((i.get("metadata") or {}).get("labels") or {}).items()]
