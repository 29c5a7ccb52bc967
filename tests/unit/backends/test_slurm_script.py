"""The sbatch script carries values byte for byte, and never a \\r (sbatch refuses \\r\\n line
breaks): values with \\r go in ANSI-C quotes, script text with \\r through base64."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.slurm.container import REGISTRY_AUTH_VAR
from flexorch_provider.backends.slurm.script import (
    _file_from_text,
    has_secrets_file,
    render_script,
    secrets_file,
    shell_word,
)
from flexorch_provider.exceptions import SpecError
from flexorch_provider.resolve import load_workload
from flexorch_provider.runner.containers import auth_json

texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(texts, texts.map(lambda t: t + "\r\n")))
def test_a_shell_word_is_the_value_exactly(value):
    out = subprocess.run(["bash", "-c", f"printf %s {shell_word(value)}"], capture_output=True, check=True).stdout
    assert out.decode() == value


def test_text_with_carriage_returns_is_written_exactly(tmp_path):
    text = "echo one\r\necho two\r\n\n"
    lines = _file_from_text(str(tmp_path / "f"), text, "END_MARK")
    subprocess.run(["bash", "-c", "\n".join(lines) + "\n"], check=True)
    assert (tmp_path / "f").read_bytes() == text.encode()


def test_the_script_holds_no_carriage_return():
    w = load_workload({"name": "s", "kind": "batch", "target": "slurm", "run": "echo a\r\necho b\r\n",
                       "setup": "true\r\n", "env": {"CRLF": "x\r\ny\r\n"}})  # fmt: skip
    script = render_script(ResolvedJob.for_run(w, "d/t/r/-1"))
    assert "\r" not in script and "export CRLF=$'x\\r\\ny\\r\\n'" in script


def _image_script(runtime, **fields):
    spec = {"name": "s", "kind": "training", "target": "slurm", "image": "ghcr.io/acme/train:1.4", "run": "python t.py",
            "env": {"A": "1"}, "slurm": {"container": runtime},
            "container": {"mounts": [{"host": "data sets", "path": "/data", "read_only": True}]}, **fields}  # fmt: skip
    job = ResolvedJob.for_run(load_workload(spec), "d/t/r/-1", secrets={"TOKEN": "value-not-in-the-script"})
    return render_script(job)


def test_podman_runs_the_step_in_the_image_with_values_by_name():
    script = _image_script("podman", resources={"gpus": "A100:2"})
    last = script.splitlines()[-1]
    assert last.startswith('podman --log-level error run --rm --name "flexorch-$SLURM_JOB_NAME-$SLURM_JOB_ID" '
                           "--network host --pull missing $flexorch_gpus ")  # fmt: skip
    assert '-v "$HOME"/"data sets":"/data":ro' in last and " -e A -e TOKEN -e FLEXORCH_RUN_KEY " in last
    assert " ghcr.io/acme/train:1.4 /bin/sh " in last and "value-not-in-the-script" not in script
    assert "--device nvidia.com/gpu=$i" in script and "podman rm -f -t 0" in script


def test_a_containers_checkpoint_folder_and_shm_on_slurm():
    last = _image_script("podman", checkpoint_dir="ckpt", resources={"shm": "1Gi"}).splitlines()[-1]
    assert ' -v "$FLEXORCH_CHECKPOINT_DIR":"$FLEXORCH_CHECKPOINT_DIR" ' in last and " --shm-size 1073741824b " in last
    last = _image_script("apptainer", checkpoint_dir="ckpt").splitlines()[-1]
    assert ' --bind "$FLEXORCH_CHECKPOINT_DIR":"$FLEXORCH_CHECKPOINT_DIR" ' in last


def test_podman_on_several_nodes_names_each_nodes_container_after_its_node(tmp_path):
    """Nodes may share an image store (the test bed's do): one name per node, each removed as its node ends."""
    import subprocess

    script = _image_script("podman", resources={"nodes": 2})
    last = script.splitlines()[-1]
    assert last.startswith("srun --kill-on-bad-exit=1 --export=ALL /bin/sh -c ")
    assert 'podman rm -f -t 0 "flexorch-$SLURM_JOB_NAME-$SLURM_JOB_ID-0"' in script  # node 0's, by the batch script
    # what each node's shell runs: its container named with its node id, the runtime's words after that
    fake = tmp_path / "podman"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_NODEID": "1", "SLURM_JOB_NAME": "j", "SLURM_JOB_ID": "7",
           "flexorch_dir": "/d", "flexorch_gpus": ""}  # fmt: skip
    words = subprocess.run(["bash", "-c", last.split("--export=ALL ", 1)[1]], env=env, capture_output=True,
                           text=True).stdout.splitlines()  # fmt: skip
    assert words[:6] == ["[--log-level]", "[error]", "[run]", "[--name]", "[flexorch-j-7-1]", "[--rm]"], words
    assert "[ghcr.io/acme/train:1.4]" in words and words[-4:-2] == ["[/bin/sh]", "[/d/j-7.container.sh]"]


def test_apptainer_and_pyxis_lines():
    apptainer = _image_script("apptainer", resources={"gpus": 1, "nodes": 2}).splitlines()[-1]
    assert apptainer.startswith("srun --kill-on-bad-exit=1 --export=ALL apptainer exec --cleanenv --nv --bind ")
    assert '--env A="${A}"' in apptainer and '--env SLURM_NODEID="${SLURM_NODEID}"' in apptainer
    assert '--env FLEXORCH_MASTER_ADDR="${FLEXORCH_MASTER_ADDR}"' in apptainer  # the rank's copies: in the wrapper
    assert " docker://ghcr.io/acme/train:1.4 /bin/sh " in apptainer
    pyxis = _image_script("pyxis").splitlines()[-1]
    assert pyxis.startswith("srun --export=ALL --container-image=ghcr.io/acme/train:1.4 --container-mounts=")
    assert '"$HOME"/"data sets":"/data":ro' in pyxis and '--container-workdir="$PWD"' in pyxis


def test_a_job_without_an_image_runs_bare_as_before():
    w = load_workload({"name": "s", "kind": "batch", "target": "slurm", "run": "echo hi"})
    script = render_script(ResolvedJob.for_run(w, "d/t/r/-1"))
    assert script.splitlines()[-1] == 'bash "$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.sh"' and "podman" not in script


LOGIN = {"registry": "ghcr.io", "login": "bot", "password": "pa$$ 'word\""}


def _private(runtime):
    spec = {"name": "s", "kind": "training", "target": "slurm", "image": "ghcr.io/acme/train:1.4", "run": "true",
            "slurm": {"container": runtime}, "container": {"registry_connection": "ghcr_bot"}}  # fmt: skip
    return ResolvedJob.for_run(load_workload(spec), "d/t/r/-1", registry=LOGIN)


def test_podman_pulls_with_an_auth_file_the_script_writes_from_the_secrets_file(tmp_path):
    job = _private("podman")
    script = render_script(job)
    assert LOGIN["password"] not in script and has_secrets_file(job)
    lines = script.splitlines()
    auth_file = '"$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.auth.json"'
    pull = next(i for i, ln in enumerate(lines) if "podman --log-level error pull --authfile" in ln)
    assert f"--authfile {auth_file}" in lines[pull] and f"rm -f {auth_file}" in lines[pull]
    # the login is used for the pull and gone before the job's own code runs, from the pulled image
    assert "--authfile" not in lines[-1] and "--pull never" in lines[-1] and pull < len(lines) - 1
    trap = next(ln for ln in script.splitlines() if ln.startswith("trap ") and "podman rm" in ln)
    assert trap.endswith('rm -f "$flexorch_secrets" "$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.auth.json"\' EXIT')
    # the secrets file and the script's own line make the auth file, byte for byte, 0600
    (tmp_path / "s.secrets").write_bytes(secrets_file(job))
    line = next(ln for ln in script.splitlines() if REGISTRY_AUTH_VAR in ln and ln.startswith("if "))
    env = {"PATH": "/usr/bin:/bin", "flexorch_dir": str(tmp_path), "SLURM_JOB_NAME": "s", "SLURM_JOB_ID": "7"}
    subprocess.run(["bash", "-c", f'. "{tmp_path}/s.secrets"; {line}; echo "left=${{{REGISTRY_AUTH_VAR}:-}}"'],
                   env=env, check=True, capture_output=True)  # fmt: skip
    auth = tmp_path / "s-7.auth.json"
    assert json.loads(auth.read_text()) == json.loads(auth_json(LOGIN)) and (auth.stat().st_mode & 0o777) == 0o600


def test_apptainer_reads_the_login_from_its_own_variables_never_passed_into_the_image():
    job = _private("apptainer")
    secrets = secrets_file(job).decode()
    assert "export APPTAINER_DOCKER_USERNAME=bot\n" in secrets and "APPTAINER_DOCKER_PASSWORD=" in secrets
    last = render_script(job).splitlines()[-1]
    assert "APPTAINER_DOCKER" not in last and "--cleanenv" in last and "--authfile" not in last


def test_pyxis_refuses_a_registry_connection_with_where_the_login_goes():
    with pytest.raises(SpecError, match=r"enroot credentials file"):
        _private("pyxis")


def test_a_job_without_a_registry_connection_has_no_login_lines():
    script = _image_script("podman")
    assert "auth.json" not in script and REGISTRY_AUTH_VAR not in script


def test_the_multi_node_contract_as_each_node_sees_it(tmp_path):
    """The batch script's shared part and a node task's part, run by bash against a stand-in
    scontrol for a two-node allocation: every node gets its rank, the group's addresses in node
    order (NodeAddr, not NodeName) and torchrun's PET_* names; nothing counts processes."""
    import os

    from flexorch_provider.backends.slurm import script as slurm_script

    fake = tmp_path / "scontrol"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = show ]; then printf "gpu-b7\\ngpu-a2\\n"; exit 0; fi\n'  # the allocation's order
        'case "$4" in gpu-b7) a=10.0.0.7;; gpu-a2) a=10.0.0.2;; esac\n'
        'echo "NodeName=$4 Arch=x86_64 NodeAddr=$a NodeHostName=$4 State=ALLOCATED"\n'
    )
    fake.chmod(0o755)
    shared = "\n".join(slurm_script.multinode_lines(4))
    show = "env | grep -E '^(FLEXORCH_|PET_|NODE_RANK|MASTER_|WORLD_SIZE|RANK=)' | sort"
    node_script = tmp_path / "node.sh"
    node_script.write_text(show + "\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu-[b7,a2]", "SLURM_JOB_ID": "123456", "SLURM_NODEID": "1"}  # fmt: skip
    out = subprocess.run(["bash", "-c", f"{shared}\nbash -c {shlex.quote(slurm_script.NODE_TASK)} {node_script}"],
                         env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    got = dict(line.split("=", 1) for line in out.splitlines())
    port = str(15000 + 123456 % 20000)
    assert got == {
        "FLEXORCH_NNODES": "2", "FLEXORCH_NODE_ADDRS": "10.0.0.7,10.0.0.2", "FLEXORCH_GPUS_PER_NODE": "4",
        "FLEXORCH_MASTER_ADDR": "10.0.0.7", "FLEXORCH_MASTER_PORT": port, "FLEXORCH_NODE_RANK": "1",
        "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": port, "PET_NNODES": "2", "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "10.0.0.7", "PET_MASTER_PORT": port,
    }  # fmt: skip


def test_a_warning_a_checkpoint_folder_and_requeues_in_the_batch_script(tmp_path):
    """warn_before: Slurm signals the batch shell (--signal=B:), which passes it to the job's process
    group; checkpoint_dir: one folder per run key; a requeue counts as a restart. The script's own
    end is run here in bash, the signal sent as Slurm would."""
    import signal
    import subprocess
    import time

    w = load_workload({"name": "s", "kind": "training", "target": "slurm", "timeout": "1h", "run": "python train.py",
                       "warn_before": {"signal": "USR1", "before": "5m"}, "checkpoint_dir": "ckpt"})  # fmt: skip
    job = ResolvedJob.for_run(w, "d/t/r/-1", env={"FLEXORCH_RESTART_COUNT": "1", "FLEXORCH_RESTART_CAUSE": "host_lost"})
    script = render_script(job)
    lines = script.splitlines()
    assert "#SBATCH --signal=B:USR1@300" in lines
    assert f'export FLEXORCH_CHECKPOINT_DIR="$SLURM_SUBMIT_DIR"/ckpt/{job.key_slug}' in lines
    assert "export FLEXORCH_RESTART_COUNT=$((FLEXORCH_RESTART_COUNT + ${SLURM_RESTART_COUNT:-0}))" in lines
    tail = lines[lines.index("flexorch_child=$!") - 1 :]
    assert tail[0].startswith("setsid bash ") and tail[-1] == 'exit "$flexorch_code"'
    functions = lines[lines.index("flexorch_child=; flexorch_cancel=") : lines.index("trap flexorch_stop URG") + 1]

    job_script = tmp_path / "job.sh"  # what the job runs: its shell outlives the warning, python saves,
    job_script.write_text(  # and a process without a handler for it (a launcher, a sleep) is left alone
        'trap : USR1\nsleep 2 &\npython3 -c "import signal, time\nsignal.signal(signal.SIGUSR1, lambda *a: '
        "print('saving', flush=True))\ntime.sleep(2)\nprint('done', flush=True)\"\nwait $!; echo \"sleep ended $?\"\n"
        "exit 7\n"
    )
    end = "\n".join([*functions, f"setsid bash {job_script} &", *tail[1:]])
    batch = subprocess.Popen(["bash", "-c", end], stdout=subprocess.PIPE, text=True)
    time.sleep(0.7)
    batch.send_signal(signal.SIGUSR1)  # Slurm, 5 minutes before the time limit
    out, _ = batch.communicate(timeout=20)
    assert out.splitlines() == ["saving", "done", "sleep ended 0"] and batch.returncode == 7

    # several nodes: the batch shell passes it on with a step beside the job's on every node, to the
    # job's processes there that handle it (not srun, which would pass it to every process of its step)
    w = load_workload({"name": "s", "kind": "training", "target": "slurm", "timeout": "1h", "run": "python train.py",
                       "warn_before": {"signal": "USR2", "before": "2m"}, "resources": {"nodes": 2}})  # fmt: skip
    lines = render_script(ResolvedJob.for_run(w, "d/t/r/-1")).splitlines()
    assert "#SBATCH --signal=B:USR2@120" in lines and "trap : USR2" in lines and "trap flexorch_warn USR2" in lines
    warn = next(line for line in lines if line.startswith("flexorch_warn() {"))
    assert "srun --overlap --ntasks-per-node=1 --export=ALL bash -c " in warn and "SLURM_JOB_ID=$SLURM_JOB_ID" in warn
    # a cancel's warning: the batch shell listens (URG) and passes it on the same way
    assert "trap flexorch_stop URG" in lines and "  flexorch_warn" in lines
    assert lines[-6].startswith("srun ") and lines[-6].endswith(" &")  # in the background: the traps run at once
    plain = render_script(ResolvedJob.for_run(load_workload({"name": "s", "kind": "batch", "target": "slurm",
                                                             "run": "true"}), "d/t/r/-1"))  # fmt: skip
    assert "flexorch_stop" not in plain and "URG" not in plain
