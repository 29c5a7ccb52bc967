"""The fields only a service has: replicas, port, health check, update policy, reconcile schedule."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from flexorch_provider.spec.autoscale import Autoscale
from flexorch_provider.spec.fields import Duration, FlexModel, Period, Text, Timeout

SCHEDULE_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")


class Health(FlexModel):
    """How to tell a service replica is healthy: an HTTP path or a command."""

    http: Annotated[str | None, Field(pattern=r"^/[^\s]*$", description="HTTP GET path on `port`, e.g. /healthz.")] = (
        None
    )
    command: Annotated[
        Text | list[Text] | None, Field(description="A command that exits 0 when healthy (string or argv).")
    ] = None
    interval: Annotated[Period, Field(description="Time between checks (at least 1s).")] = timedelta(seconds=10)
    timeout: Annotated[Timeout, Field(description="How long one check may take (at least 1s).")] = timedelta(seconds=5)
    grace: Annotated[Duration, Field(description="Start-up time before failures count.")] = timedelta(seconds=30)

    @model_validator(mode="after")
    def _one_probe(self) -> Health:
        if (self.http is None) == (self.command is None):
            raise ValueError("set exactly one of 'health.http' (a path like /healthz) or 'health.command'")
        return self


class UpdatePolicy(FlexModel):
    """How a new version replaces the running one."""

    strategy: Annotated[
        Literal["rolling", "recreate"], Field(description="rolling: one replica at a time gated on health.")
    ] = "rolling"
    max_unavailable: Annotated[
        int | None,
        Field(
            strict=True,
            ge=0,
            le=1000,
            description="Replicas that may be down during a rolling update. Unset: add the new replica on a host "
            "with room (max_surge), else replace one replica in place while the others serve; 0: never fewer than "
            "`replicas` serving (the update stops when no host has room).",
        ),
    ] = None
    max_surge: Annotated[
        int, Field(strict=True, ge=0, le=1000, description="Extra replicas allowed during a rolling update.")
    ] = 1

    @model_validator(mode="after")
    def _progress(self) -> UpdatePolicy:
        if self.strategy == "rolling" and self.max_unavailable == 0 and self.max_surge == 0:
            raise ValueError(
                "max_surge: max_unavailable and max_surge cannot both be 0: the update could never progress"
            )
        return self


class ServiceFields(FlexModel):
    """Fields only a service has."""

    replicas: Annotated[int, Field(strict=True, ge=0, le=1000, description="How many copies to keep running.")] = 1
    port: Annotated[int | None, Field(strict=True, ge=1, le=65535, description="Port the service listens on.")] = None
    health: Annotated[Health | None, Field(description="Health check: http path or command.")] = None
    update: Annotated[UpdatePolicy, Field(description="How new versions roll out.")] = Field(
        default_factory=UpdatePolicy
    )
    reconcile: Annotated[
        str | None,
        Field(description="Cron/preset for the run that restores desired state (ssh targets); null disables."),
    ] = "*/5 * * * *"
    watch: Annotated[
        bool,
        Field(
            strict=True,
            description="ssh/local: a watcher (the <name>-watch DAG) restores replicas within "
            "seconds from the triggerer; false leaves it to the reconcile schedule.",
        ),
    ] = True
    autoscale: Annotated[
        Autoscale | None,
        Field(description="Scale between min and max replicas on a metric; `replicas` is the count to start with."),
    ] = None

    def _check_service(self) -> None:
        if self.health and self.health.http and self.port is None:
            raise ValueError("port: required because health.http is set; add the port the service listens on")
        if self.reconcile is not None:
            check_schedule(self.reconcile, "reconcile")
        a = self.autoscale
        if a is not None and a.metric.source == "http" and a.metric.port is None and self.port is None:
            raise ValueError("autoscale.metric.port: required because the service has no port to read the metric on")


def check_schedule(value: str, key: str) -> None:
    if value.startswith("@"):
        if value not in SCHEDULE_PRESETS:
            import difflib

            hint = difflib.get_close_matches(value, SCHEDULE_PRESETS, n=1)
            raise ValueError(
                f"{key}: {value!r} is not a preset"
                + (f"; did you mean {hint[0]!r}?" if hint else f"; use one of {', '.join(SCHEDULE_PRESETS)}")
            )
        return
    from croniter import croniter

    try:
        fields = croniter(value).expanded
    except Exception as e:  # croniter raises several unrelated types
        raise ValueError(
            f"{key}: {value!r} is not a valid cron expression ({e}); e.g. '0 2 * * *' = 02:00 daily"
        ) from None
    if len(fields) != 5:
        raise ValueError(f"{key}: {value!r} must have 5 fields (minute hour day month weekday)")
