"""``autoscale:`` on a service: between ``min`` and ``max`` replicas, as many as a metric asks.

::

    autoscale:
      min: 1
      max: 4
      metric: {source: http, path: /metrics, format: prometheus, name: inflight_requests}
      target: 8            # the metric's value per replica the service is sized for
      up_delay: 30s        # at most one step up per this long
      down_delay: 5m       # the load must have been lower for this long (and no step for this long)
      interval: 10s        # how often the metric is read

Metric sources: ``http`` (a path on each replica's port: a plain number, JSON with a ``field``
path, or Prometheus text with a metric ``name`` and ``labels``; summed over the replicas),
``prometheus`` (an instant query through an Airflow HTTP connection to the Prometheus server),
``command`` (run on each replica's host, prints a number; summed).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from flexorch_provider.spec.fields import ConnId, Duration, FlexModel, Period, Text


class HttpMetric(FlexModel):
    """A number read over HTTP from every replica (in-flight requests, queue depth), summed."""

    source: Annotated[Literal["http"], Field(description="http: read on each replica's host.")]
    path: Annotated[str, Field(pattern=r"^/[^\s]*$", description="HTTP GET path on each replica, e.g. /metrics.")]
    port: Annotated[int | None, Field(strict=True, ge=1, le=65535, description="Default: the service's port.")] = None
    format: Annotated[
        Literal["number", "json", "prometheus"],
        Field(description="number: the body is the value; json: `field` says where; prometheus: text exposition."),
    ] = "number"
    field: Annotated[
        str | None,
        Field(pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", description="json: a dotted path, e.g. data.inflight."),
    ] = None
    name: Annotated[
        str | None, Field(pattern=r"^[A-Za-z_:][A-Za-z0-9_:]*$", description="prometheus: the metric's name.")
    ] = None
    labels: Annotated[dict[str, str], Field(description="prometheus: only samples with these labels (summed).")] = (
        Field(default_factory=dict)
    )

    @model_validator(mode="after")
    def _where(self) -> HttpMetric:
        if self.format == "json" and not self.field:
            raise ValueError("field: required with format json (a dotted path to the number, e.g. data.inflight)")
        if self.format == "prometheus" and not self.name:
            raise ValueError("name: required with format prometheus (the metric's name, e.g. inflight_requests)")
        return self


class PrometheusMetric(FlexModel):
    """An instant query to a Prometheus server (its URL: the Airflow connection's host)."""

    source: Annotated[Literal["prometheus"], Field(description="prometheus: one instant query for the service.")]
    connection: Annotated[ConnId, Field(description="Airflow HTTP connection to the Prometheus server.")]
    query: Annotated[Text, Field(min_length=1, description="PromQL giving one number for the whole service.")]


class CommandMetric(FlexModel):
    """A command run on each replica's host that prints one number (summed over the replicas)."""

    source: Annotated[Literal["command"], Field(description="command: run on each replica's host.")]
    command: Annotated[Text | list[Text], Field(description="A command (string or argv) printing a number.")]


Metric = Annotated[
    Annotated[HttpMetric, Tag("http")]
    | Annotated[PrometheusMetric, Tag("prometheus")]
    | Annotated[CommandMetric, Tag("command")],
    Discriminator(lambda v: v.get("source") if isinstance(v, dict) else getattr(v, "source", None)),
]


class Autoscale(FlexModel):
    """Scale a service between ``min`` and ``max`` replicas on a metric (target value per replica)."""

    min: Annotated[int, Field(strict=True, ge=0, le=1000, description="Fewest replicas.")] = 1
    max: Annotated[int, Field(strict=True, ge=1, le=1000, description="Most replicas.")]
    metric: Annotated[Metric, Field(description="Where the load is read: http, prometheus or command.")]
    target: Annotated[
        float, Field(strict=True, gt=0, allow_inf_nan=False, description="The metric's value one replica is sized for.")
    ]
    up_delay: Annotated[Duration, Field(description="At most one step up per this long.")] = timedelta(seconds=30)
    down_delay: Annotated[
        Duration, Field(description="Scale down only after the load was lower for this long (no flapping).")
    ] = timedelta(minutes=5)
    interval: Annotated[Period, Field(description="How often the metric is read (at least 1s).")] = timedelta(
        seconds=15
    )

    @model_validator(mode="after")
    def _range(self) -> Autoscale:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self
