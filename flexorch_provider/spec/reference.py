"""The spec reference in Markdown, generated from the models (docs/spec-reference.md)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from flexorch_provider.spec.code import CodeOptions
from flexorch_provider.spec.container import ContainerOptions, Mount
from flexorch_provider.spec.fields import GpuSpec, Resources, Retries, SecretRef
from flexorch_provider.spec.models import SPEC_CLASSES, Identity, _StepIdentity
from flexorch_provider.spec.service import Health, ServiceFields, UpdatePolicy
from flexorch_provider.spec.targets import KubernetesOptions, LocalOptions, SlurmOptions, SshOptions, Toleration
from flexorch_provider.spec.workload import Workload

CONTAINERS = """A workload with `image` runs in that image on every target it lands on, or is refused there with a reason; without `image` it runs as a bare process. Never a silent fallback from one to the other.

| target | how the image runs | `runtime` | `pull` | `mounts` | `registry_connection` |
|---|---|---|---|---|---|
| local, ssh | the job runner: `podman`/`docker create` named `flexorch-<run key>-<attempt>`, then `start --attach`, supervised like a bare job; removed however it ends | used (a host without it refuses at submit; placement `any` tries the next host) | used | used | an auth file (0600) that exists only until the container does |
| slurm | the batch script, with `slurm.container`: `podman run`, `apptainer exec docker://`, pyxis `srun --container-image` | not used | podman only (apptainer and pyxis fetch images themselves) | used (bind mounts) | podman: an auth file (0600) gone with the job; apptainer: its `APPTAINER_DOCKER_*` variables; pyxis: refused (enroot's credentials file on the nodes) |
| kubernetes | the pod's container | not used | `imagePullPolicy` (only when set) | not used (pods get no host paths) | a `kubernetes.io/dockerconfigjson` Secret in `imagePullSecrets`, deleted with the Job / at undeploy |

Env and secret values reach a container by name (`-e NAME`), never as words of a command line. `flexorch validate` warns where a target cannot run the image as configured; `flexorch render SPEC --target T` prints the exact command lines."""

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Identity and scheduling (top level)", Identity, ""),
    (
        "Workload fields (every kind; pipeline defaults for its steps)",
        Workload,
        "`run` is required for every kind but pipeline.",
    ),
    ("Service fields (`kind: service`)", ServiceFields, ""),
    (
        "Pipeline steps (`steps[]`)",
        _StepIdentity,
        "Each step also takes `kind` (default batch), `run` and any workload field; unset fields inherit the pipeline's, `env` and `secrets` merge.",
    ),
    ("`resources`", Resources, ""),
    ("`resources.gpus`", GpuSpec, "Shorthand: `2`, `A100`, `A100:2`, `A100:80GB:2`."),
    (
        "`secrets.<NAME>`",
        SecretRef,
        "Shorthand: `variable:NAME`, `connection:CONN_ID[.password|login|host|extra|uri]`, `kubernetes:SECRET/KEY`.",
    ),
    ("`retries`", Retries, "Shorthand: `retries: 2`."),
    ("`health`", Health, ""),
    ("`update`", UpdatePolicy, ""),
    ("`container` (Containers: `image` on every target)", ContainerOptions, CONTAINERS),
    ("`container.mounts[]`", Mount, ""),
    (
        "`code`",
        CodeOptions,
        "Shorthand: `code: .` (the spec's folder) or `code: src`. The files are packed into a bundle named by a "
        "digest of their paths, executable bits and bytes; each host, or a Slurm login node, receives a bundle once "
        "and keeps it in `~/.flexorch/code/<digest>` (14 days after its last use); each run starts in its own copy "
        "(`$FLEXORCH_CODE_DIR`, with `$FLEXORCH_CODE_DIGEST`). Targets: local, ssh, slurm (the nodes must see the "
        "login node's home); kubernetes with `git` only (an init container fetches the commit the task resolved).",
    ),
    ("`slurm`", SlurmOptions, ""),
    ("`kubernetes`", KubernetesOptions, ""),
    ("`kubernetes.tolerations[]`", Toleration, ""),
    ("`ssh`", SshOptions, ""),
    ("`local`", LocalOptions, ""),
]


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(see below)"
    else:
        value = field.default
    if value is PydanticUndefined:
        return ""
    if hasattr(value, "total_seconds"):
        from flexorch_provider.spec.units import format_duration

        return f"`{format_duration(value)}`"
    return f"`{json.dumps(value)}`"


def markdown_reference() -> str:
    out = [
        "# Spec reference",
        "",
        "Generated from the models by `flexorch schema --format markdown`; do not edit by hand.",
        "Editors: point yaml-language-server at the JSON Schema from `flexorch schema`.",
        "",
        f"`kind` is one of: {', '.join(f'`{k}`' for k in SPEC_CLASSES)}. Unknown keys are errors.",
    ]
    for title, model, note in SECTIONS:
        out += ["", f"## {title}", ""]
        if note:
            out += [note, ""]
        out += ["| key | default | description |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {_default(field)} | {desc} |")
    return "\n".join(out) + "\n"
