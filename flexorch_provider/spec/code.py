"""``code:``: the folder whose files travel with the job (flexorch_provider/code.py packs them)."""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from flexorch_provider.spec.fields import ConnId, FlexModel, MemorySize, OrShorthand, Text

GIT_URL = re.compile(r"^(https?://|ssh://|file://|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:)[^\s\x00-\x1f]+$")
GIT_REF = re.compile(r"^(?!-)[A-Za-z0-9._/@^~+-]{1,200}$")
DEFAULT_MAX_SIZE = 64 * 2**20
MAX_MAX_SIZE = 2 * 2**30


class CodeOptions(FlexModel):
    """The job's code: a folder beside the spec, sent to the target once per content (by digest) and
    given to each run as its own copy, where the job starts. Shorthand: ``code: .`` or ``code: src``."""

    path: Annotated[
        Text,
        Field(
            description="The folder, relative to the spec file's folder ('.' is that folder), or with `git` to the "
            "repository's root; it must stay inside it."
        ),
    ] = "."
    git: Annotated[
        Text | None,
        Field(
            description="A git repository to take the code from instead of a folder (https://..., ssh://..., "
            "git@host:path, file://...; a submitted spec: https only). The worker fetches `ref` from it (the "
            "kubernetes target: an init container of each pod)."
        ),
    ] = None
    ref: Annotated[
        Text | None,
        Field(description="With `git`: the branch, tag or commit to run (default: the repository's HEAD)."),
    ] = None
    connection: Annotated[
        ConnId | None,
        Field(
            description="With `git`: an Airflow connection whose password is a token for the repository (its "
            "login the user name; default x-access-token)."
        ),
    ] = None
    exclude: Annotated[
        list[Text],
        Field(
            description="More files to leave out, in .gitignore syntax ('data/', '*.ckpt'); the folder's own "
            ".gitignore files are honoured, and .git/, __pycache__/ and *.pyc are never sent."
        ),
    ] = Field(default_factory=list)
    max_size: Annotated[
        MemorySize,
        Field(description="Refuse the job before it is submitted when the files add up to more (default 64Mi)."),
    ] = DEFAULT_MAX_SIZE

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        norm = posixpath.normpath(value.strip() or ".")
        if norm.startswith("/") or norm == ".." or norm.startswith("../") or "\0" in norm:
            raise ValueError(
                f"{value!r} leaves the spec's folder; give a folder inside it, relative to the spec ('.', 'src')"
            )
        return norm

    @field_validator("git")
    @classmethod
    def _git_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not GIT_URL.match(value):
            raise ValueError(
                f"{value[:100]!r} is not a git repository URL (https://host/repo.git, ssh://..., git@host:repo, file://)"
            )
        return value

    @field_validator("ref")
    @classmethod
    def _git_ref(cls, value: str | None) -> str | None:
        if value is not None and not GIT_REF.match(value):
            raise ValueError(f"{value[:100]!r} is not a branch, tag or commit name")
        return value

    @model_validator(mode="after")
    def _git_fields(self) -> CodeOptions:
        if self.git is None and (self.ref is not None or self.connection is not None):
            raise ValueError("ref and connection apply to code from git: set code.git too")
        return self

    @field_validator("max_size")
    @classmethod
    def _cap(cls, value: int) -> int:
        if value <= 0 or value > MAX_MAX_SIZE:
            raise ValueError("must be more than 0 and at most 2Gi (bigger data belongs in storage the job reads)")
        return value


def code_shorthand(value: Any) -> Any:
    """``code: src`` → ``{path: src}``."""
    return {"path": value} if isinstance(value, str) else value


CodeField = Annotated[
    CodeOptions | None,
    BeforeValidator(code_shorthand),
    OrShorthand({"type": "string", "examples": [".", "src"]}),
    Field(description="Code that travels with the job: a folder beside the spec (see `code`)."),
]
