"""FlexOperator in real Airflow via dag.test(): the fast end-to-end cases.

dag.test() runs the real task runner, the real execution API, the real trigger (in line)
and a real SQLite metadata DB; only the scheduler/triggerer processes are skipped (those
are in tests/e2e).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pendulum
import pytest

DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from flexorch_provider import FlexOperator

RUNS = {runs!r}
def spec(run, **extra):
    return {{"name": "t", "kind": "batch", "run": run, "local": {{"run_dir": RUNS}}, **extra}}

with DAG("flex_it", schedule=None, start_date=pendulum.datetime(2025, 1, 1)) as dag:
    FlexOperator(task_id="ok_sync", spec=spec("echo day {{{{ ds }}}} $WHO", env={{"WHO": "{{{{ dag.dag_id }}}}"}}),
                 deferrable=False, poll_interval=0.2)
    FlexOperator(task_id="ok_deferred", spec=spec("echo deferred"), poll_interval=0.2, defer_after=0)
    FlexOperator(task_id="fails", spec=spec("echo before failing; exit 9"), poll_interval=0.2)
    FlexOperator(task_id="times_out", spec=spec("sleep 60", timeout=1), poll_interval=0.2)
    FlexOperator(task_id="secret", spec=spec('echo "token is $TOKEN"', secrets={{"TOKEN": "variable:flex_token"}}),
                 poll_interval=0.2)
    FlexOperator(task_id="fallback", spec=spec("echo fell back", target=["kubernetes", "local"],
                                                       image={image!r}, container={{"pull": "never"}}),
                 poll_interval=0.2)
"""

SECRET = "s3cr3t-token-value-42"


@pytest.fixture(scope="module")
def dag_run(tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    from tests.integration.containers import IMAGE, image_tarball, import_image

    import_image(image_tarball())  # the fallback's local run happens in this image
    runs = tmp_path_factory.mktemp("runs")
    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags_folder / "flex_it_dag.py").write_text(textwrap.dedent(DAG_FILE.format(runs=str(runs), image=IMAGE)))
    os.environ["AIRFLOW_VAR_FLEX_TOKEN"] = SECRET
    db.resetdb()
    bag = DagBag(str(dags_folder))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag("flex_it")
    dr = dag.test(logical_date=pendulum.datetime(2025, 3, 4, tz="UTC"))
    return dr, runs


def _states(dr):
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


def _xcom(dr, task_id, key="return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id, key=key).one()
        return row.value


def _log_of(runs: Path, task_id: str) -> str:
    logs = [p for p in runs.rglob("log") if task_id.replace("_", "-") in str(p)]
    assert logs, f"no run directory for {task_id}"
    return logs[-1].read_text()


def test_success_both_modes_with_xcom(dag_run):
    dr, runs = dag_run
    states = _states(dr)
    assert states["ok_sync"] == "success" and states["ok_deferred"] == "success"
    value = _xcom(dr, "ok_sync")
    assert value["target"] == "local" and value["exit_code"] == 0 and value["state"] == "succeeded"
    assert value["run_key"] == f"flex_it/ok_sync/{dr.run_id}/-1"
    assert "day 2025-03-04 flex_it" in _log_of(runs, "ok_sync")  # templates rendered by Airflow


def test_failure_and_timeout_fail_the_task(dag_run):
    dr, runs = dag_run
    states = _states(dr)
    assert states["fails"] == "failed"
    assert states["times_out"] == "failed"
    assert "timeout (timed out after 1s)" in _log_of(runs, "times_out")


def test_secret_reaches_job_but_never_log_or_xcom(dag_run):
    dr, runs = dag_run
    assert _states(dr)["secret"] == "success"
    log = _log_of(runs, "secret")
    assert "token is ***" in log and SECRET not in log
    assert SECRET not in repr(_xcom(dr, "secret")) and SECRET not in repr(_xcom(dr, "secret", key="job"))


def test_ordered_targets_fall_back(dag_run):
    dr, _ = dag_run
    assert _states(dr)["fallback"] == "success"
    assert _xcom(dr, "fallback")["target"] == "local"


def test_failure_event_carries_exit_code_and_log_tail():
    from flexorch_provider.exceptions import JobFailedError
    from flexorch_provider.operators.flex import FlexOperator

    op = FlexOperator(task_id="x", spec={"name": "t", "kind": "batch", "run": "x"})
    event = {"status": "failed", "handle": {"target": "local", "job_id": "k/1", "run_key": "r"},
             "state": "failed", "exit_code": 9, "message": "exit code 9", "log_tail": ["before failing"]}  # fmt: skip
    with pytest.raises(JobFailedError) as info:
        op.execute_complete({}, event)
    assert info.value.exit_code == 9
    assert "exit code 9" in str(info.value) and "before failing" in str(info.value)


def test_pipeline_spec_needs_a_step():
    from flexorch_provider.exceptions import ConfigurationError
    from flexorch_provider.operators.flex import FlexOperator

    spec = Path(__file__).parents[2] / "spec_examples" / "recsys-pipeline.yaml"
    with pytest.raises(ConfigurationError, match="pass step="):
        FlexOperator(task_id="x", spec=spec)
    op = FlexOperator(task_id="x", spec=spec, step="train", target="local")
    assert op.workload.name == "train" and op.workload.target == ["local"]
