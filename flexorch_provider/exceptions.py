"""The one exception tree of flexorch.

::

    FlexorchError
    ├── SpecError (also ValueError)        a spec is invalid; carries every problem found
    ├── ConfigurationError (also ValueError) a bad operator argument or missing setup
    ├── PolicyError                        a submission breaks its team's policy (every rule it breaks)
    ├── ClientError                        the Airflow REST API refused a CLI call or cannot be reached
    └── BackendError                       something went wrong running a job
        ├── BackendUnavailableError        a backend's optional dependency is missing
        ├── SubmitError                    a target refused or could not take the job
        │   └── NoCapacityError            a host has no room for it now (another host may)
        ├── HostError                      an SSH host could not be reached, or a command on it failed
        ├── ApiError                       a Kubernetes API request (or the client's setup) failed
        ├── JobFailedError                 the job ran and ended unsuccessfully
        ├── ServiceError                   a service did not reach its desired state
        └── JobLostError                   the job disappeared (purged, host gone)

Library errors (paramiko, kubernetes, subprocess) are mapped onto this tree at the
backend boundary with ``raise ... from e`` so users only ever catch these. (The job runner,
which runs on hosts without this package, reports through exit codes and JSON instead.)
"""

from __future__ import annotations

from dataclasses import dataclass


class FlexorchError(Exception):
    """Base class of every error flexorch raises on purpose."""


@dataclass(frozen=True)
class SpecProblem:
    """One problem in one spec: where it is and what to do about it."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field or '<spec>'}: {self.message}"


class SpecError(FlexorchError, ValueError):
    """A spec is invalid. ``problems`` lists each problem with file, line and field."""

    def __init__(self, problems: list[SpecProblem] | SpecProblem | str, *, file: str = "<spec>"):
        if isinstance(problems, str):
            problems = [SpecProblem(file=file, line=None, field="", message=problems)]
        elif isinstance(problems, SpecProblem):
            problems = [problems]
        self.problems: list[SpecProblem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def file(self) -> str:
        return self.problems[0].file if self.problems else "<spec>"


class ConfigurationError(FlexorchError, ValueError):
    """A bad argument to an operator/sensor, or setup flexorch needs is missing."""


class PolicyError(FlexorchError):
    """A submission breaks its team's policy (``flexorch_policy.yaml``); ``refusals`` names each
    rule it breaks, with the numbers."""

    def __init__(self, refusals: list[str]) -> None:
        self.refusals = list(refusals)
        super().__init__("refused by policy:\n  " + "\n  ".join(self.refusals))


class ClientError(FlexorchError):
    """A call of ``flexorch submit/logs/status/cancel`` to the Airflow REST API failed; the message
    is the one line the user sees. ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class BackendError(FlexorchError):
    """Running a job went wrong."""


class BackendUnavailableError(BackendError):
    """A backend cannot be used here, usually because an optional dependency is missing."""


class SubmitError(BackendError):
    """A target refused the job at submit (unreachable, no capacity, rejected request).

    With an ordered target list, the operator tries the next target.
    """


class NoCapacityError(SubmitError):
    """A host has no room for the job right now (no free GPU of the model it asks for); nothing
    was started there, so another host may take it."""


class HostError(BackendError):
    """One SSH host could not be reached, or a command on it failed (the message names the host)."""


class ServiceError(BackendError):
    """A service did not reach its desired state (a replica never got healthy, no host fits)."""


class JobFailedError(BackendError):
    """The job ran and ended unsuccessfully (non-zero exit, killed, timed out)."""

    def __init__(self, message: str, *, exit_code: int | None = None, log_tail: list[str] | None = None):
        self.exit_code = exit_code
        self.log_tail = list(log_tail or [])
        text = message
        if self.log_tail:
            text += "\n--- last log lines ---\n" + "\n".join(self.log_tail)
        super().__init__(text)


class JobLostError(BackendError):
    """The job can no longer be found (purged from the scheduler, host gone)."""


class ApiError(BackendError):
    """A request to the Kubernetes API server, or setting up the client, failed.

    ``status`` is the HTTP status of the answer (404, 409, ...); None when no answer came
    (connection refused, TLS, timeout, configuration)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
