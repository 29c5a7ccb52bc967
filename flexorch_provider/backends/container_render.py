"""``flexorch render`` for a job with ``image`` on local and ssh hosts: the runtime's command lines
exactly as the job runner builds them (:mod:`flexorch_provider.runner.containers`), with the
words only the host knows (the runtime's path, the attempt, the claimed GPUs) shown as such."""

from __future__ import annotations

import shlex
from typing import Any

from flexorch_provider.runner import containers
from flexorch_provider.runner.supervisor import BASE_ENV_KEYS

# what the supervisor adds to every job's environment (see Supervisor.environment)
RUNNER_ENV = ("FLEXORCH_RUN_DIR", "FLEXORCH_JOB_ID", "FLEXORCH_RUN_KEY")


def container_lines(doc: dict[str, Any], secret_names: list[str], run_dir: str, workdir: str) -> list[str]:
    """Comment and command lines for the job document ``doc`` (``job_document`` plus job_id) run in
    ``run_dir`` with working directory ``workdir`` (both as the host will see them)."""
    spec = doc["container"]
    want = spec.get("runtime") or "auto"
    runtime = "podman" if want == "auto" else want
    gpus = doc.get("gpus") or {}
    indices = gpus.get("indices") or list(range(int(gpus.get("count") or 0)))
    job = dict(doc, container=dict(spec, runtime_path=runtime), gpu_indices=indices)
    # the runner's GPU variables follow the job's env (a job without GPUs is told it has none)
    gpu_env = (
        ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER") if indices else ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
    )
    env = dict.fromkeys([*(doc.get("env") or {}), *gpu_env, *secret_names, *RUNNER_ENV])
    names = [k for k in containers.container_env(job, env) if k not in BASE_ENV_KEYS]
    login = bool(spec.get("registry_connection"))
    name = containers.container_name(job)
    quiet = containers.quiet(runtime)
    lines = [
        f"# in the image {spec['image']}, with {runtime}"
        + (
            " (runtime auto: the first of podman, docker on the host's PATH; shown with podman)"
            if want == "auto"
            else ""
        ),
        "# environment by name only (-e NAME): the runtime reads each value from its own environment, so no value "
        "is on a command line" + (f"; secrets: {', '.join(secret_names)}" if secret_names else ""),
    ]
    if secret_names and containers.uses_runtime_secrets(runtime):
        lines.append(
            "# secrets through podman's secret store (podman secret create NAME - reads the value from stdin; "
            f"--secret mounts it under {containers.SECRETS_IN}, container.sh exports it), so podman inspect shows "
            "none; removed with the container"
        )
    if indices:
        lines.append(
            f"# GPUs: the {len(indices)} the runner claims on the host (shown as {', '.join(map(str, indices))}); "
            "inside, CUDA_VISIBLE_DEVICES counts them from 0"
        )
    if login:
        lines.append(
            f"# registry login of connection {spec['registry_connection']!r}: written to {run_dir}/"
            f"{containers.REGISTRY_DIR}/config.json (0600) for the create, deleted right after it"
        )
    lines += [
        shlex.join(containers.create_argv(job, run_dir, workdir, names, login=login, secret_names=secret_names)),
        "# the supervised step (its output is the job's log, its exit code the job's):",
        shlex.join([runtime, *quiet, "start", "--attach", name]),
        "# however it ends (and on cancel): "
        + shlex.join([runtime, "rm", "-f", "-t", "0", name] if runtime == "podman" else [runtime, "rm", "-f", name]),
    ]
    return lines
