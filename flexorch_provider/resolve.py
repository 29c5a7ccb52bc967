"""spec → the workload to run: load, apply overrides, pick a pipeline step, resolve secrets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from flexorch_provider.exceptions import ConfigurationError, SpecError, SpecProblem
from flexorch_provider.spec.container import image_registry
from flexorch_provider.spec.fields import SecretRef
from flexorch_provider.spec.loader import parse_spec, parse_yaml
from flexorch_provider.spec.models import Job, PipelineSpec


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_workload(
    spec: str | Path | dict[str, Any] | BaseModel,
    *,
    step: str | None = None,
    overrides: dict[str, Any] | None = None,
    target: str | list[str] | None = None,
) -> Job:
    """Whatever FlexOperator was given → one validated job (a spec or a pipeline step).

    Overrides (and ``target``) apply to the workload that runs: for a pipeline, the step.
    """
    extra = dict(overrides or {})
    if target is not None:
        extra["target"] = target
    if isinstance(spec, str | Path):
        path = str(spec)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(SpecProblem(path, None, "", f"cannot read the file: {e.strerror or e}")) from None
        data, lines = parse_yaml(text, path)
        model: BaseModel = parse_spec(data, file=path, lines=lines)
        if extra and not isinstance(model, PipelineSpec):
            model = parse_spec(_merge(data, extra), file=path, lines=lines)
            extra = {}
    elif isinstance(spec, dict):
        model = parse_spec(spec, file="<dict spec>")
        if extra and not isinstance(model, PipelineSpec):
            model = parse_spec(_merge(spec, extra), file="<dict spec + overrides>")
            extra = {}
    elif isinstance(spec, BaseModel):
        model = spec
    else:
        raise ConfigurationError(f"spec must be a path, a dict or a spec model, not {type(spec).__name__}")

    if isinstance(model, PipelineSpec):
        steps = {s.name: s for s in model.effective_steps()}
        if step is None:
            raise ConfigurationError(
                f"{model.name!r} is a pipeline with steps {', '.join(steps)}; pass step='<name>' to run one of them, "
                "or drop the spec into the specs folder to get the whole pipeline as a DAG"
            )
        if step not in steps:
            raise ConfigurationError(f"pipeline {model.name!r} has no step {step!r} (steps: {', '.join(steps)})")
        model = steps[step]
    elif step is not None:
        raise ConfigurationError(
            f"step={step!r} was given but the spec is a {getattr(model, 'kind', '?')}, not a pipeline"
        )
    if extra:
        try:
            model = type(model).model_validate(_merge(model.model_dump(mode="json"), extra))
        except ValidationError as e:
            raise SpecError(f"overrides make the spec invalid: {e}", file="<overrides>") from None
        if isinstance(model, Job):
            try:
                model.check_workload()
            except ValueError as e:
                raise SpecError(f"overrides make the spec invalid: {e}", file="<overrides>") from None
    if not isinstance(model, Job):
        raise ConfigurationError(f"{type(model).__name__} is not a runnable workload")
    return model


def resolve_secret(name: str, ref: SecretRef) -> str:
    """Read one secret from Airflow. Raises ConfigurationError saying how to create it."""
    if ref.source == "variable":
        from airflow.sdk import Variable

        try:
            value = Variable.get(ref.name)
        except Exception as e:
            raise ConfigurationError(
                f"secrets.{name}: Airflow Variable {ref.name!r} could not be read ({type(e).__name__}); "
                f"create it with: airflow variables set {ref.name} <value>"
            ) from None
        return str(value)
    if ref.source == "connection":
        from airflow.sdk import BaseHook

        try:
            conn = BaseHook.get_connection(ref.name)
        except Exception as e:
            raise ConfigurationError(
                f"secrets.{name}: Airflow Connection {ref.name!r} could not be read ({type(e).__name__}); "
                f"create it with: airflow connections add {ref.name} --conn-password <value>"
            ) from None
        field = ref.key or "password"
        value = conn.get_uri() if field == "uri" else getattr(conn, field, None)
        if value in (None, ""):
            raise ConfigurationError(f"secrets.{name}: connection {ref.name!r} has no {field}")
        return str(value)
    raise ConfigurationError(f"secrets.{name}: {ref} is read by the kubernetes target itself, not by Airflow")


def resolve_secrets(workload: Job) -> dict[str, str]:
    """Every Airflow-backed secret of the workload, registered with the secret masker."""
    from airflow.sdk.log import mask_secret

    values: dict[str, str] = {}
    for name, ref in workload.airflow_secrets.items():
        value = resolve_secret(name, ref)
        mask_secret(value, name)
        values[name] = value
    return values


def resolve_registry(workload: Job) -> dict[str, str] | None:
    """The registry login for a private image (``container.registry_connection``): the connection's
    host (the registry), login and password; the password is registered with the secret masker.
    None for a workload without image or connection. Raises ConfigurationError saying what to fix."""
    conn_id = workload.container.registry_connection
    if not workload.image or not conn_id:
        return None
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret

    how = (
        f"airflow connections add {conn_id} --conn-type generic --conn-host <registry, e.g. ghcr.io> "
        "--conn-login <user> --conn-password <token>"
    )
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as e:
        raise ConfigurationError(
            f"container.registry_connection: Airflow Connection {conn_id!r} could not be read "
            f"({type(e).__name__}); create it with: {how}"
        ) from None
    missing = [f for f in ("host", "login", "password") if not getattr(conn, f, None)]
    if missing:
        raise ConfigurationError(
            f"container.registry_connection: connection {conn_id!r} has no {' and no '.join(missing)}; "
            f"it needs host (the registry), login and password: {how}"
        )
    registry = str(conn.host).strip().removeprefix("https://").removeprefix("http://").rstrip("/")
    if conn.port and ":" not in registry:
        registry = f"{registry}:{conn.port}"
    if registry in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        registry = "docker.io"
    wanted = image_registry(workload.image)
    if registry != wanted:
        raise ConfigurationError(
            f"container.registry_connection: connection {conn_id!r} is for registry {registry!r}, but image "
            f"{workload.image!r} comes from {wanted!r}; set the connection's host to {wanted!r} or use another connection"
        )
    mask_secret(str(conn.password), "registry password")
    return {"registry": registry, "login": str(conn.login), "password": str(conn.password)}
