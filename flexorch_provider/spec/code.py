"""``code:``: the folder whose files travel with the job (flexorch_provider/code.py packs them)."""

from __future__ import annotations

import posixpath
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from flexorch_provider.spec.fields import FlexModel, MemorySize, OrShorthand, Text

DEFAULT_MAX_SIZE = 64 * 2**20
MAX_MAX_SIZE = 2 * 2**30


class CodeOptions(FlexModel):
    """The job's code: a folder beside the spec, sent to the target once per content (by digest) and
    given to each run as its own copy, where the job starts. Shorthand: ``code: .`` or ``code: src``."""

    path: Annotated[
        Text,
        Field(
            description="The folder, relative to the spec file's folder ('.' is that folder); it must stay inside it."
        ),
    ] = "."
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
