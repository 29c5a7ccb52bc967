"""How a workload with ``image`` runs on plain hosts (``local``, ``ssh``): the container runtime,
the pull policy, and host paths mounted into the container. Kubernetes runs images natively."""

from __future__ import annotations

import re
from typing import Annotated, Literal

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
    """Settings for running ``image`` on the ``local`` and ``ssh`` targets."""

    runtime: Annotated[
        Literal["auto", "podman", "docker"],
        Field(description="Container runtime on the host; auto: the first of podman, docker found there."),
    ] = "auto"
    pull: Annotated[
        Literal["missing", "always", "never"],
        Field(description="When to pull the image: missing (default), always, or never (it must be on the host)."),
    ] = "missing"
    mounts: Annotated[list[Mount], Field(max_length=64, description="Host paths mounted into the container.")] = Field(
        default_factory=list
    )
