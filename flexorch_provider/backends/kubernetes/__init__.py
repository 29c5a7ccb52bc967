"""The ``kubernetes`` target: a Job per run, a Deployment + Service per service.

Talks to the cluster through apache-airflow-providers-cncf-kubernetes' ``KubernetesHook``
(the spec's ``kubernetes.connection``). The package, along its seams:

- :mod:`.manifests`  pure data: a resolved job → Secret/Job/headless Service or
  Secret/Deployment/Service (also what ``flexorch render --target kubernetes`` prints)
- :mod:`.api`        the boundary with the kubernetes client: ``Api`` returns plain dicts and
  raises only ``ApiError`` (a ``BackendError``), never a library exception
- :mod:`.status`     Job and pod status → ``JobStatus`` (OOMKilled, ImagePullBackOff, Unschedulable)
- :mod:`.logs`       pod logs from a byte offset, read by time (``sinceTime``) after the first read
- :mod:`.backend`    ``KubernetesBackend`` (submit, poll, read_logs, cancel, service) and the rollout wait

What a handle carries is :class:`KubernetesJobData`. Only ``submit`` raises ``SubmitError``
(and ``service`` when no client can be set up); ``poll`` has no side effects.
"""

from flexorch_provider.backends.kubernetes.api import Api, ApiError, plain
from flexorch_provider.backends.kubernetes.backend import KubernetesBackend, KubernetesJobData, job_data
from flexorch_provider.backends.kubernetes.manifests import (
    MANAGED,
    NAME_LABEL,
    RUN_KEY_ANNOTATION,
    RUN_LABEL,
    SERVICE_LABEL,
    dns_label,
    job_manifests,
    manifests,
    secret_name,
    service_manifests,
)

__all__ = [
    "MANAGED",
    "NAME_LABEL",
    "RUN_KEY_ANNOTATION",
    "RUN_LABEL",
    "SERVICE_LABEL",
    "Api",
    "ApiError",
    "KubernetesBackend",
    "KubernetesJobData",
    "dns_label",
    "job_data",
    "job_manifests",
    "manifests",
    "plain",
    "secret_name",
    "service_manifests",
]
