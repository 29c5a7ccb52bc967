"""The flexorch command line, run as the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from flexorch_provider.cli.main import main
from flexorch_provider.spec.loader import iter_spec_files

ROOT = Path(__file__).parents[3]
EXAMPLES = ROOT / "spec_examples"


def flexorch(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("flexorch", path=str(Path(sys.executable).parent)) or "flexorch"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_validate_examples_exits_zero():
    result = flexorch("validate", str(EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok  ") == len(list(iter_spec_files([EXAMPLES])))


def test_validate_reports_file_line_field_and_did_you_mean(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\nkind: batch\nrun: echo\nresorces: {cpus: 2}\n")
    good = tmp_path / "good.yaml"
    good.write_text("name: good\nkind: batch\nrun: echo\n")
    result = flexorch("validate", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.strip() == f"{bad}:4: resorces: unknown key; did you mean 'resources'?"
    assert "Traceback" not in result.stderr


def test_validate_one_line_per_problem_and_duplicate_names(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("name: same\nkind: batch\nrun: x\n")
    (tmp_path / "b.yaml").write_text("name: same\nkind: batch\nrun: x\n")
    (tmp_path / "c.yaml").write_text("name: c\nkind: batch\nrun: x\ntimeout: never\nresources: {memory: 3}\n")
    assert main(["validate", "-q", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert any("b.yaml: name: 'same' is already used by" in line for line in lines)
    assert any(line.startswith(f"{tmp_path / 'c.yaml'}:4: timeout:") for line in lines)


def test_validate_missing_path_and_empty_folder(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["validate", str(tmp_path)]) == 1
    assert "no spec files" in capsys.readouterr().err


def test_schema_prints_valid_json_schema():
    result = flexorch("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["discriminator"]["mapping"]) == {"service", "training", "batch", "inference", "pipeline"}


def test_render_prints_defaulted_spec(capsys):
    assert main(["render", str(EXAMPLES / "llm-finetune.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("name: llm-finetune\nkind: training\n")
    assert "gpus:\n    count: 2\n    type: A100\n" in out
    assert "timeout: 6h" in out and "namespace: ml" in out


def test_render_bad_spec_is_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: batch\n")
    assert main(["render", str(bad)]) == 1
    assert f"{bad}:1: run: required" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["nope"], ["validate"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_render_target_ssh_prints_the_commands_each_host_runs(capsys):
    assert main(["render", str(EXAMPLES / "thumbnails-fleet.yaml"), "--target", "ssh"]) == 0
    out = capsys.readouterr().out
    assert "placement any: the first reachable of render-01, render-02, render-03:2222" in out
    assert "submit .flexorch/runs/thumbnails-fleet-batch-" in out
    assert "/bin/sh -c './make_thumbnails.sh --date {{ ds }} --size 256'" in out


def test_render_target_works_for_every_example_and_every_target_it_names(capsys):
    """A first-day stumble: `render --target slurm` of a spec with max_pending and one target failed
    ("target lists only slurm") although the spec is valid as written."""
    from flexorch_provider.spec.loader import load_spec

    for path in iter_spec_files([EXAMPLES]):
        spec = load_spec(path)
        steps = [s.name for s in getattr(spec, "steps", None) or []]
        targets = spec.target if not steps else spec.effective_steps()[0].target
        for target in targets:
            argv = ["render", str(path), "--target", str(target), *(["--step", steps[0]] if steps else [])]
            assert main(argv) == 0, (path.name, target, capsys.readouterr().err)
        capsys.readouterr()


def test_render_shows_the_multi_node_contract_on_slurm_and_kubernetes(capsys, tmp_path):
    spec = tmp_path / "ddp.yaml"
    spec.write_text("name: ddp\nkind: training\ntarget: [slurm, kubernetes]\nimage: ghcr.io/acme/train:1\n"
                    "run: torchrun --nproc-per-node 8 train.py\nresources: {nodes: 2, gpus: 8}\n")  # fmt: skip
    assert main(["render", str(spec), "--target", "kubernetes"]) == 0
    out = capsys.readouterr().out
    for name in (
        "FLEXORCH_NODE_RANK",
        "FLEXORCH_NODE_ADDRS",
        "FLEXORCH_GPUS_PER_NODE",
        "PET_NNODES",
        "PET_MASTER_PORT",
    ):
        assert name in out, name
    assert "batch.kubernetes.io/job-completion-index" in out and "WORLD_SIZE" not in out
    assert main(["render", str(spec), "--target", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "export FLEXORCH_GPUS_PER_NODE=8" in out and "PET_NODE_RANK" in out and "WORLD_SIZE" not in out


def test_render_target_ssh_for_a_service_shows_replicas_health_and_the_runner_calls(capsys):
    assert main(["render", str(EXAMPLES / "embeddings-ssh-service.yaml"), "--target", "ssh"]) == 0
    out = capsys.readouterr().out
    assert (
        "2 replicas of revision " in out and "one per host (each listens on port 9000), on lab-gpu-1, lab-gpu-2" in out
    )
    assert "health: command 'curl -fsS http://127.0.0.1:9000/health' on the host" in out
    assert "replicas .flexorch/services/service-embeddings-ssh-" in out
    assert '"FLEXORCH_REPLICA": "0"' in out and '"timeout": null' in out


def test_render_target_for_a_pipeline_step_and_an_unknown_backend(capsys):
    assert main(["render", str(EXAMPLES / "recsys-pipeline.yaml"), "--target", "local", "--step", "evaluate"]) == 0
    out = capsys.readouterr().out
    assert "recsys-pipeline-evaluate-" in out and "WAREHOUSE_PASSWORD" in out
    assert main(["render", str(EXAMPLES / "recsys-pipeline.yaml"), "--target", "nowhere", "--step", "train"]) == 1
    assert main(["render", str(EXAMPLES / "recsys-pipeline.yaml"), "--target", "slurm"]) == 2
    assert "render one step with --step (steps: extract-features, train, evaluate, serve)" in capsys.readouterr().err


def test_generate_writes_static_dag_files(tmp_path, capsys):
    assert main(["generate", str(EXAMPLES), str(tmp_path)]) == 0
    assert (tmp_path / "flexorch_hello_local.py").exists()
    assert "wrote" in capsys.readouterr().out
    assert main(["generate", str(EXAMPLES), str(tmp_path), "-q"]) == 0
    assert capsys.readouterr().out == ""  # nothing changed, nothing listed


def test_validate_warns_where_a_target_cannot_run_the_image_as_configured(tmp_path):
    spec = tmp_path / "boxed.yaml"
    spec.write_text(
        "name: boxed\nkind: batch\ntarget: [slurm, kubernetes]\nimage: python:3.11\nrun: 'true'\n"
        "container: {pull: never, mounts: [{host: /data, path: /data}]}\nslurm: {container: pyxis}\n"
    )
    result = flexorch("validate", str(spec))
    assert result.returncode == 0, result.stderr  # warnings, not errors: the spec is valid
    warnings = [ln for ln in result.stderr.splitlines() if ": warning: " in ln]
    assert len(warnings) == 2, result.stderr
    assert warnings[0].startswith(f"{spec}: warning: boxed: slurm: container.pull never cannot hold with pyxis")
    assert "kubernetes: container.mounts are host paths" in warnings[1]
    assert result.stderr.strip().endswith("1 spec(s) valid, 2 warning(s)")


def test_container_warnings_for_local_follow_this_machines_runtimes():
    from flexorch_provider.resolve import load_workload
    from flexorch_provider.spec.container import container_warnings

    w = load_workload({"name": "b", "kind": "batch", "run": "x", "image": "python:3.11", "target": ["local"]})
    assert container_warnings(w, lambda: []) == [
        "local: no podman or docker on this machine's PATH: the local target will refuse the job here (install "
        "one on the Airflow workers, or drop local from target)"
    ]
    assert container_warnings(w, lambda: ["docker"]) == []
    docker_only = w.model_copy(update={"container": w.container.model_copy(update={"runtime": "podman"})})
    assert "no podman on this machine's PATH" in container_warnings(docker_only, lambda: ["docker"])[0]
    bare = load_workload({"name": "b", "kind": "batch", "run": "x", "target": ["local", "slurm"]})
    assert container_warnings(bare, lambda: []) == []  # no image, nothing to warn about


def test_validate_checks_the_policy_file_and_the_specs_against_it(tmp_path):
    (tmp_path / "job.yaml").write_text("name: j\nkind: batch\nowner: risk\ntarget: [slurm, ssh]\nrun: x\n")
    (tmp_path / "flexorch_policy.yaml").write_text("teams:\n  risk: {members: [rita], targets: [slurm]}\n")
    result = flexorch("validate", str(tmp_path))
    assert result.returncode == 1
    assert (
        result.stdout.strip()
        == f"{tmp_path / 'job.yaml'}: policy: team risk: target ssh is not allowed (allowed: slurm)"
    )
    (tmp_path / "flexorch_policy.yaml").write_text("teams:\n  risk: {members: [rita], targts: [slurm]}\n")
    result = flexorch("validate", str(tmp_path / "flexorch_policy.yaml"))
    assert (
        result.returncode == 1
        and "flexorch_policy.yaml:2: teams.risk.targts: unknown key; did you mean 'targets'?" in result.stdout
    )
    schema = json.loads(flexorch("schema", "--policy").stdout)
    assert "Team" in schema["$defs"] and "file" not in schema["properties"]
