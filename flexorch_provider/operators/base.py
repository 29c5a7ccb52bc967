"""What every flexorch operator shares: the spec, loaded and validated once when the DAG is parsed;
its ``run``/``setup``/``env``/``workdir`` rendered byte for byte; the workload resolved for one run
(templates, secrets, registry login, the run key). :class:`~.flex.FlexOperator` runs a job with it,
:class:`~.service.FlexServiceOperator` a service action.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from pydantic import BaseModel

from flexorch_provider.backends.base import ResolvedJob, run_key
from flexorch_provider.code import Bundle, bundle_for
from flexorch_provider.plain_templates import CR_STAND_IN, has_template
from flexorch_provider.resolve import load_workload, resolve_registry, resolve_secrets


class SpecOperator(BaseOperator):
    """A task that runs (a step of) a flexorch spec.

    :param spec: path to a spec file, a spec dict, or a spec/step model.
    :param step: for a pipeline spec, the step to run.
    :param overrides: values merged into the spec before validation, e.g. ``{"resources": {"gpus": 2}}``.
    :param target: replaces the spec's target (or ordered target list).

    A spec with ``gpu_pool`` takes one slot of the Airflow pool ``gpu-<pool>`` per GPU it
    requests (``flexorch pools sync`` sizes those pools), so Airflow never over-commits. The
    spec's ``retries`` are the task's.
    """

    template_fields: tuple[str, ...] = ("run", "setup", "env", "workdir")
    template_fields_renderers = {"run": "bash", "setup": "bash", "env": "json"}
    template_ext = ()

    def __init__(
        self,
        *,
        spec: str | Path | dict[str, Any] | BaseModel,
        step: str | None = None,
        overrides: dict[str, Any] | None = None,
        target: str | list[str] | None = None,
        code_root: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        workload = load_workload(spec, step=step, overrides=overrides, target=target)
        if code_root is None and isinstance(spec, str | Path):
            code_root = Path(spec).parent
        # the folder a spec's ``code.path`` is relative to: its file's folder (given as a path, or from a
        # specs folder); a spec given as a dict or model has none unless the DAG says
        self.code_root = str(code_root) if code_root is not None else None
        gpus = workload.resources.gpus.count * workload.resources.nodes if workload.resources.gpus else 0
        if workload.gpu_pool and gpus:
            from flexorch_provider.inventory.pools import airflow_pool_name

            kwargs.setdefault("pool", airflow_pool_name(workload.gpu_pool))
            kwargs.setdefault("pool_slots", gpus)
        kwargs.setdefault("retries", workload.retries.count)
        kwargs.setdefault("retry_delay", workload.retries.delay)
        super().__init__(**kwargs)
        self.workload = workload
        self.run = workload.run
        self.setup = workload.setup
        self.env = dict(workload.env)
        self.workdir = workload.workdir

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        if "ds" not in context and context.get("dag_run") is not None:
            date_macros_from_run_after(context, self.log)
        super().render_template_fields(context, jinja_env)

    def render_template(
        self, content: Any, context: Any, jinja_env: Any = None, seen_oids: set[int] | None = None
    ) -> Any:
        """Values arrive byte for byte: text without a template is not touched, and a template keeps
        its trailing newline and its ``\r\n`` (Jinja's defaults drop the one and rewrite the other)."""
        if "ds" not in context and context.get("dag_run") is not None:  # a mapped task renders through here only
            date_macros_from_run_after(context, self.log)
        if not isinstance(content, str):
            return super().render_template(content, context, jinja_env, seen_oids)
        if not has_template(content):
            return content
        env = (jinja_env or self.get_template_env()).overlay(keep_trailing_newline=True)
        keep_cr = "\r" in content and CR_STAND_IN not in content
        source = content.replace("\r", CR_STAND_IN) if keep_cr else content
        out = self._render(env.from_string(source), context)
        return out.replace(CR_STAND_IN, "\r") if keep_cr and isinstance(out, str) else out

    def code_bundle(self) -> Bundle | None:
        """The job's code as its folder is now (``code:``), packed; None for a job without code."""
        return bundle_for(self.workload, self.code_root)

    def resolve_for_run(
        self, ti: Any, action: str | None = None, placement: dict[str, Any] | None = None
    ) -> ResolvedJob:
        """The workload for this task instance's run: rendered fields, secrets, the run key, its code."""
        return ResolvedJob.for_run(
            self.workload,
            run_key(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1)),
            run=self.run,
            setup=self.setup,
            env=self.env or {},
            workdir=self.workdir,
            secrets=resolve_secrets(self.workload),
            action=action,
            placement=placement,
            registry=resolve_registry(self.workload),
            code=self.code_bundle(),
        )


def date_macros_from_run_after(context: Any, log: Any) -> None:
    """A run without a logical date (a manual run in Airflow 3) has no ``{{ ds }}``.

    Specs use ``{{ ds }}`` to mean "the day this run is about"; for a manual run that is the
    day it was requested, so the date macros come from the run's ``run_after``.
    """
    run_after = getattr(context["dag_run"], "run_after", None)
    if run_after is None:
        return
    ts = run_after.isoformat()
    context.update(
        {
            "ds": run_after.strftime("%Y-%m-%d"),
            "ds_nodash": run_after.strftime("%Y%m%d"),
            "ts": ts,
            "ts_nodash": run_after.strftime("%Y%m%dT%H%M%S"),
            "ts_nodash_with_tz": ts.replace("-", "").replace(":", ""),
        }
    )
    log.info("this run has no logical date (a manual run): {{ ds }} and {{ ts }} use its run_after %s", ts)
