"""How a workload with ``image`` runs on plain hosts (``local``, ``ssh``): the container runtime,
the pull policy, and host paths mounted into the container. Kubernetes runs images natively."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from flexorch_provider.spec.fields import FlexModel

# A reference like ghcr.io/acme/train:1.4 or repo@sha256:...: never an option (no leading '-'), no spaces.
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
CONTAINER_RUNTIMES = ("podman", "docker")  # the order "auto" looks for them on a host


def check_image(value: str) -> str:
    if not IMAGE_RE.match(value):
        raise ValueError(
            f"{value!r} is not an image reference; write e.g. 'ghcr.io/acme/train:1.4' or 'python:3.11-slim'"
        )
    return value


def _check_path(value: str, what: str) -> str:
    if not value or any(c in value for c in ",:\n\x00"):
        raise ValueError(f"{what} {value!r} must be a non-empty path without ',', ':' or newlines")
    return value


class Mount(FlexModel):
    """A host path mounted into the container (datasets, checkpoints, caches)."""

    host: Annotated[str, Field(description="Path on the host; relative paths are from the account's home.")]
    path: Annotated[str, Field(pattern=r"^/", description="Absolute path inside the container.")]
    read_only: Annotated[bool, Field(strict=True, description="Mount read-only.")] = False

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_path(value, "mounts.host")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _check_path(value, "mounts.path")


class ContainerOptions(FlexModel):
    """How ``image`` runs; which target uses which field: docs/spec-reference.md, "Containers"."""

    runtime: Annotated[
        Literal["auto", "podman", "docker"],
        Field(description="Container runtime on local and ssh hosts; auto: the first of podman, docker found there."),
    ] = "auto"
    pull: Annotated[
        Literal["missing", "always", "never"],
        Field(
            description="When to pull the image: missing (default), always, or never (it must be on the host); "
            "on kubernetes the pod's imagePullPolicy."
        ),
    ] = "missing"
    mounts: Annotated[
        list[Mount], Field(max_length=64, description="Host paths mounted into the container (local, ssh, slurm).")
    ] = Field(default_factory=list)
    registry_connection: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=250,
            pattern=r"^[A-Za-z0-9_.-]+$",
            description="Airflow connection with the registry's credentials (host = registry, login, password), "
            "for a private image; the password never appears in the spec, a log or a command line.",
        ),
    ] = None


def image_registry(image: str) -> str:
    """The registry an image reference pulls from: its first component when that names a host
    (has a '.' or ':' or is localhost), else Docker Hub (``docker.io``)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def container_warnings(job: Any, runtimes_here: Callable[[], list[str]] | None = None) -> list[str]:
    """What about ``image`` cannot hold on one of the job's targets as the spec configures it
    (``flexorch validate`` prints these; the job would be refused or behave differently there).
    ``runtimes_here`` lists the container runtimes on this machine's PATH (the local target's)."""
    if not job.image:
        return []
    opts = job.container
    out: list[str] = []
    for target in job.target:
        if target == "local":
            found = (runtimes_here or _runtimes_on_path)()
            want = list(CONTAINER_RUNTIMES) if opts.runtime == "auto" else [opts.runtime]
            if not set(want) & set(found):
                out.append(
                    f"local: no {' or '.join(want)} on this machine's PATH: the local target will refuse "
                    "the job here (install one on the Airflow workers, or drop local from target)"
                )
        elif target == "slurm":
            if opts.runtime != "auto":
                out.append(
                    f"slurm: container.runtime {opts.runtime} is not used there: the batch script runs the "
                    f"image with slurm.container ({job.slurm.container})"
                )
            if opts.pull == "never" and job.slurm.container in ("apptainer", "pyxis"):
                out.append(
                    f"slurm: container.pull never cannot hold with {job.slurm.container}, which fetches "
                    "docker:// images itself; use slurm.container: podman to run only images on the nodes"
                )
        elif target == "kubernetes":
            if opts.mounts:
                out.append(
                    "kubernetes: container.mounts are host paths, which pods do not get: the job runs "
                    "there without them (mount volumes on the cluster side, or drop kubernetes from target)"
                )
            if opts.runtime != "auto":
                out.append(
                    f"kubernetes: container.runtime {opts.runtime} is not used there: the cluster runs the image"
                )
    return out


def _runtimes_on_path() -> list[str]:
    return [name for name in CONTAINER_RUNTIMES if shutil.which(name)]
