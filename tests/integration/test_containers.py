"""Jobs with an image on the local and ssh targets run in that image through a real podman
(rootful for the worker's account, rootless for the ssh fleet's accounts)."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.backends.local import LocalBackend
from flexorch_provider.backends.ssh import SshBackend
from flexorch_provider.dev.testbed.fleet import SUBNET
from flexorch_provider.exceptions import NoCapacityError
from flexorch_provider.resolve import load_workload
from tests.conftest import FLEET_CONN
from tests.integration.containers import (
    IMAGE,
    containers,
    image_tarball,
    import_image,
    podman_ready,
    start_registry,
)
from tests.integration.follow import all_lines, wait_finished

LOCAL = LocalBackend()
SSH = SshBackend()
SECRET = "s3cr3t-container-value"


@pytest.fixture(scope="module")
def image():
    why = podman_ready()
    if why:
        raise RuntimeError(why)
    tar = image_tarball()
    import_image(tar)
    return tar


def job(tmp_path, run, *, key=None, **fields):
    spec = {"name": "boxed", "kind": "batch", "target": "local", "image": IMAGE, "container": {"pull": "never"},
            "run": run, "local": {"run_dir": str(tmp_path / "runs")}, **fields}  # fmt: skip
    w = load_workload(spec)
    return ResolvedJob.for_run(w, key or f"d/boxed/{time.time_ns()}/-1", secrets={"TOKEN": SECRET})


def test_a_job_runs_in_its_image_with_its_env_and_exit_code(tmp_path, image):
    h = LOCAL.submit(job(tmp_path, 'echo "in $(cat /etc/hostname 2>/dev/null || echo image)"; ls /bin/busybox; '
                                   'printf "%s|" "$MULTI"; echo; echo "token=$TOKEN"; exit 3',
                         env={"MULTI": "line one\nline two"}))  # fmt: skip
    status = wait_finished(LOCAL, h, 60)
    lines = all_lines(LOCAL, h)
    assert status.state == JobState.FAILED and status.exit_code == 3, lines
    assert "/bin/busybox" in lines  # the image's filesystem, not the host's
    assert "line one" in lines and "line two|" in lines  # a newline in a value arrives as is
    assert "token=***" in lines and SECRET not in "\n".join(lines)
    assert containers(name_part=h.job_id.replace("/", "-")) == []  # removed when it ended


def test_the_jobs_env_never_steers_the_runtime_and_still_reaches_the_image(tmp_path, image):
    """LD_PRELOAD or DOCKER_HOST in a spec's env would run the job's code on the host, outside its
    image (the runtime process would load or obey them). The runtime gets none of them; inside the
    image the job still sees its values, byte for byte."""
    marker = tmp_path / "preloaded-on-the-host"
    hostile = {"LD_PRELOAD": "/nonexistent/evil.so", "CONTAINERS_CONF": str(tmp_path / "nope.conf"),
               "DOCKER_HOST": "tcp://203.0.113.1:2375", "XDG_RUNTIME_DIR": str(tmp_path),
               "HTTP_PROXY": "http://203.0.113.1:3128", "LD_LIBRARY_PATH": f"{marker}\nx y 'q'"}  # fmt: skip
    run = 'for v in LD_PRELOAD CONTAINERS_CONF DOCKER_HOST HTTP_PROXY; do eval "echo $v=\\$$v"; done; printf "%s|" "$LD_LIBRARY_PATH"'
    h = LOCAL.submit(job(tmp_path, run, env=hostile))
    status = wait_finished(LOCAL, h, 60)
    lines = all_lines(LOCAL, h)
    assert status.state == JobState.SUCCEEDED, lines  # podman started: none of them reached it
    for name in ("LD_PRELOAD", "CONTAINERS_CONF", "DOCKER_HOST", "HTTP_PROXY"):
        assert f"{name}={hostile[name]}" in lines, lines
    assert f"{marker}" in lines and "x y 'q'|" in lines  # a newline and quotes arrive as they are


def test_secret_values_are_never_on_a_command_line(tmp_path, image):
    h = LOCAL.submit(job(tmp_path, "sleep 20"))
    try:
        name = "flexorch-" + h.job_id.replace("/", "-")
        deadline = time.time() + 30
        while name not in containers() and time.time() < deadline:
            time.sleep(0.2)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        inspect = subprocess.run(["podman", "inspect", "--format", "{{.Path}} {{.Args}}", name],
                                 capture_output=True, text=True).stdout  # fmt: skip
        assert name in containers() and "container.sh" in inspect
        assert SECRET not in ps and SECRET not in inspect
    finally:
        LOCAL.cancel(h)


def test_secret_values_are_not_in_the_containers_inspect_and_leave_with_it(tmp_path, image):
    """`-e NAME` keeps values off command lines, but the runtime then holds them in the container's
    Config.Env for anyone who may inspect it on that host: secrets go through podman's secret
    store instead (the job still reads them), and are removed with the container."""
    h = LOCAL.submit(job(tmp_path, 'echo "token=$TOKEN"; sleep 20'))
    name = "flexorch-" + h.job_id.replace("/", "-")
    try:
        deadline = time.time() + 30
        while name not in containers() and time.time() < deadline:
            time.sleep(0.2)
        config = subprocess.run(["podman", "inspect", "--format", "{{json .Config}}", name],
                                capture_output=True, text=True).stdout  # fmt: skip
        assert '"Env"' in config and SECRET not in config
        stored = subprocess.run(["podman", "secret", "ls", "--format", "{{.Name}}"], capture_output=True, text=True)
        assert f"{name}.TOKEN" in stored.stdout.split()
        stack_deadline = time.time() + 30
        while "token=***" not in all_lines(LOCAL, h) and time.time() < stack_deadline:
            time.sleep(0.2)
        assert "token=***" in all_lines(LOCAL, h)  # the job read the value (masked in its log)
    finally:
        LOCAL.cancel(h)
    wait_finished(LOCAL, h, 60)
    left = subprocess.run(["podman", "secret", "ls", "--format", "{{.Name}}"], capture_output=True, text=True)
    assert not [n for n in left.stdout.split() if n.startswith(name)]


def test_cancel_and_timeout_leave_no_container(tmp_path, image):
    h = LOCAL.submit(job(tmp_path, "echo started; sleep 300"))
    name = "flexorch-" + h.job_id.replace("/", "-")
    deadline = time.time() + 30
    while "started" not in all_lines(LOCAL, h) and time.time() < deadline:
        time.sleep(0.2)
    LOCAL.cancel(h)
    assert LOCAL.poll([h])[h.job_id].state == JobState.CANCELLED
    assert name not in containers()
    timed = LOCAL.submit(job(tmp_path, "sleep 300", timeout="2s"))
    status = wait_finished(LOCAL, timed, 60)
    assert status.state == JobState.TIMEOUT
    assert "flexorch-" + timed.job_id.replace("/", "-") not in containers()


def test_a_job_in_an_image_gets_the_warning_in_every_process_its_checkpoints_and_its_shm(tmp_path, image, monkeypatch):
    """warn_before in a container: every process in it gets the signal (a child shell with its own trap
    saves), then the timeout stops it; the run key's checkpoint folder is mounted at its own path;
    /dev/shm has resources.shm."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = (
        "grep ' /dev/shm ' /proc/mounts; echo step-3 > \"$FLEXORCH_CHECKPOINT_DIR/step\"\n"
        'sh -c \'trap "echo child saved; cat $FLEXORCH_CHECKPOINT_DIR/step" USR1; echo child up; '
        "while :; do sleep 0.2; done'\necho not reached\n"
    )
    j = job(tmp_path, run, timeout="5s", warn_before={"signal": "USR1", "before": "3s"}, checkpoint_dir="ckpt",
            resources={"shm": "256Mi"})  # fmt: skip
    h = LOCAL.submit(j)
    status = wait_finished(LOCAL, h, 60)
    lines = all_lines(LOCAL, h)
    text = "\n".join(lines)
    assert status.state == JobState.TIMEOUT, lines
    assert "child up" in lines and "child saved" in lines and "step-3" in lines, lines
    assert text.index("SIGUSR1 to the processes in the container that handle it: its timeout comes in") < text.index(
        "child saved"
    )
    assert "not reached" not in lines  # the job's own shell outlived the signal, and the timeout ended it
    assert any("/dev/shm" in line and "size=262144k" in line for line in lines), lines
    assert (tmp_path / "home" / "ckpt" / j.key_slug / "step").read_text() == "step-3\n"


def test_a_missing_image_fails_with_the_runtimes_message(tmp_path, image):
    h = LOCAL.submit(job(tmp_path, "true", image="localhost/flexorch-no-such-image:9"))
    status = wait_finished(LOCAL, h, 60)
    assert status.state == JobState.FAILED
    assert "could not create the container" in status.message and "no-such-image" in status.message


def test_a_host_without_the_runtime_refuses_at_submit(tmp_path, image, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        NoCapacityError, match="cannot run the job's image: no container runtime here: looked for podman"
    ):
        LOCAL.submit(job(tmp_path, "true"))


def test_mounts_and_workdir_reach_the_container(tmp_path, image):
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("dataset\n")
    out = tmp_path / "out"
    out.mkdir()
    h = LOCAL.submit(job(tmp_path, "cat /data/input.txt; pwd; echo written > result.txt; echo x > /data/nope",
                         workdir=str(out), container={"pull": "never", "mounts": [
                             {"host": str(data), "path": "/data", "read_only": True}]}))  # fmt: skip
    status = wait_finished(LOCAL, h, 60)
    lines = all_lines(LOCAL, h)
    assert "dataset" in lines and str(out) in lines, lines
    assert (out / "result.txt").read_text() == "written\n"
    assert status.state == JobState.FAILED and not (data / "nope").exists()  # read-only mount


def test_a_job_runs_in_its_image_on_an_ssh_host(ssh_fleet, image):
    host = ssh_fleet.hosts[3]
    import_image(image, host.user)  # rootless: that account's own image store
    w = load_workload({"name": "boxed", "kind": "batch", "target": "ssh", "image": IMAGE, "container": {"pull": "never"},
                       "run": "ls /bin/busybox; echo user=$(id -u) token=$TOKEN",
                       "ssh": {"connection": FLEET_CONN, "hosts": [host.entry]}})  # fmt: skip
    h = SSH.submit(ResolvedJob.for_run(w, f"d/ssh-boxed/{time.time_ns()}/-1", secrets={"TOKEN": SECRET}))
    status = wait_finished(SSH, h, 90)
    lines = all_lines(SSH, h)
    assert status.state == JobState.SUCCEEDED, lines
    assert "/bin/busybox" in lines and "user=0 token=***" in lines  # root inside a rootless container
    assert containers(host.user) == []


def test_a_slurm_job_runs_its_setup_and_run_in_its_image(slurm_cluster, image):
    from flexorch_provider.backends.slurm import SlurmBackend

    slurm = SlurmBackend()
    w = load_workload({"name": "boxed", "kind": "training", "target": "slurm", "image": IMAGE,
                       "container": {"pull": "never"}, "setup": "echo setup in $(ls /bin/busybox)",
                       "run": 'echo "run with $GREETING"; exit 4', "env": {"GREETING": "hello\nthere"}})  # fmt: skip
    h = slurm.submit(ResolvedJob.for_run(w, f"d/slurm-boxed/{time.time_ns()}/-1"))
    status = wait_finished(slurm, h, 90)
    lines = all_lines(slurm, h)
    assert status.state == JobState.FAILED and status.exit_code == 4, lines
    assert "setup in /bin/busybox" in lines and "run with hello" in lines and "there" in lines
    assert containers(name_part=h.job_id) == []  # removed with the job

    long = slurm.submit(ResolvedJob.for_run(w.model_copy(update={"run": "echo started; sleep 300", "setup": None}),
                                            f"d/slurm-boxed-long/{time.time_ns()}/-1"))  # fmt: skip
    deadline = time.time() + 60
    while not containers(name_part=long.job_id) and time.time() < deadline:
        time.sleep(0.3)
    assert containers(name_part=long.job_id), "the job's container never started"
    slurm.cancel(long)
    assert wait_finished(slurm, long, 60).state == JobState.CANCELLED
    deadline = time.time() + 30
    while containers(name_part=long.job_id) and time.time() < deadline:
        time.sleep(0.3)
    assert containers(name_part=long.job_id) == []


def test_a_service_runs_as_containers_with_health_checks_and_a_rolling_update(ssh_fleet, image):
    from tests.integration.test_ssh_services import answer

    hosts = ssh_fleet.hosts[:3]
    for h in hosts:
        import_image(image, h.user)

    def deploy(version, action="deploy"):
        w = load_workload({"name": "boxed-web", "kind": "service", "target": "ssh", "image": IMAGE,
                           "container": {"pull": "never"}, "replicas": 2, "port": 8000, "env": {"VERSION": version},
                           "run": 'echo "$VERSION $FLEXORCH_REPLICA" > /tmp/index.html && exec httpd -f -p "$PORT" -h /tmp',
                           "health": {"http": "/", "interval": "1s", "grace": "10s"},
                           "ssh": {"connection": FLEET_CONN, "hosts": [h.entry for h in hosts]}})  # fmt: skip
        lines: list[str] = []
        return SSH.service(ResolvedJob.for_run(w, "boxed-web/deploy/manual/-1", action=action), lines.append), lines

    try:
        first, _ = deploy("v1")
        assert sorted(a.strip() for a in (answer(h) for h in hosts) if a) == ["v1 0", "v1 1"]
        second, _ = deploy("v2")
        assert second["revision"] != first["revision"]
        assert sorted(a.strip() for a in (answer(h) for h in hosts) if a) == ["v2 0", "v2 1"]
        running = [c for h in hosts for c in containers(h.user)]
        assert len(running) == 2, running  # the v1 containers went when their replicas were retired
    finally:
        deploy("v2", action="undeploy")
    assert [c for h in hosts for c in containers(h.user)] == []


def test_a_command_health_check_runs_inside_the_replicas_container(ssh_fleet, image):
    host = ssh_fleet.hosts[1]
    import_image(image, host.user)
    marker = "/tmp/flexorch-ready-only-in-the-container"

    def deploy(action="deploy"):
        w = load_workload({"name": "boxed-worker", "kind": "service", "target": "ssh", "image": IMAGE,
                           "container": {"pull": "never"}, "replicas": 1,
                           "run": f"touch {marker}; exec sleep 600",
                           "health": {"command": f"test -f {marker}", "interval": "1s", "grace": "10s"},
                           "ssh": {"connection": FLEET_CONN, "hosts": [host.entry]}})  # fmt: skip
        lines: list[str] = []
        return SSH.service(ResolvedJob.for_run(w, "boxed-worker/deploy/manual/-1", action=action), lines.append), lines

    try:
        summary, log = deploy()  # healthy only if the check looked inside the container
        assert summary["replicas"][0]["host"] == host.entry, log
        assert not Path(marker).exists()  # the file is the container's alone
    finally:
        deploy("undeploy")
    assert containers(host.user) == []


def test_render_prints_the_create_command_the_runner_runs(tmp_path, image):
    """`flexorch render --target local` shows the runtime's command line word for word: podman
    records the argv it was created with, and the render of the same job (its attempt filled in) is it."""
    key = f"d/rendered/{time.time_ns()}/-1"
    resolved = job(tmp_path, "sleep 30", key=key, env={"MODE": "it's $HOME"}, workdir=str(tmp_path))
    rendered = LOCAL.render(resolved)
    h = LOCAL.submit(resolved)
    try:
        name = "flexorch-" + h.job_id.replace("/", "-")
        deadline = time.time() + 30
        while name not in containers() and time.time() < deadline:
            time.sleep(0.2)
        out = subprocess.run(["podman", "inspect", "--format", "{{json .Config.CreateCommand}}", name],
                             capture_output=True, text=True).stdout  # fmt: skip
        created = json.loads(out)
    finally:
        LOCAL.cancel(h)
    attempt = h.job_id.rsplit("/", 1)[1]
    create_lines = [ln for ln in rendered.splitlines() if " create " in ln and not ln.startswith("#")]
    assert len(create_lines) == 1, rendered
    words = shlex.split(create_lines[0].replace("<attempt>", attempt))
    assert words[0] == "podman" and Path(created[0]).name == "podman"
    assert words[1:] == created[1:]
    assert "-e" in words and "MODE" in words and "it's $HOME" not in create_lines[0]  # by name, never the value


def test_a_second_submit_of_a_running_container_job_reattaches(tmp_path, image):
    """A restarted worker submits the run key again: it finds the running container, never a second one."""
    key = f"d/reattach/{time.time_ns()}/-1"
    first = LOCAL.submit(job(tmp_path, "echo started; sleep 300", key=key))
    try:
        deadline = time.time() + 30
        while "started" not in all_lines(LOCAL, first) and time.time() < deadline:
            time.sleep(0.2)
        again = LOCAL.submit(job(tmp_path, "echo started; sleep 300", key=key))
        assert again.job_id == first.job_id
        assert containers(name_part=first.job_id.split("/")[0]) == ["flexorch-" + first.job_id.replace("/", "-")]
    finally:
        LOCAL.cancel(first)
    assert containers(name_part=first.job_id.split("/")[0]) == []


@pytest.fixture(scope="module")
def registry(tmp_path_factory, image, ssh_fleet):
    reg = start_registry(tmp_path_factory.mktemp("registry"), image, SUBNET + ".1")
    yield reg
    reg.stop()


def private(registry, spec: dict, *, login: bool = True, key: str = "") -> ResolvedJob:
    spec = {**spec, "image": registry.image(), "container": {"pull": "always", "registry_connection": "private_reg"}}
    creds = {"registry": registry.address, "login": registry.login, "password": registry.password}
    return ResolvedJob.for_run(load_workload(spec), key or f"d/private/{time.time_ns()}/-1",
                               registry=creds if login else None)  # fmt: skip


def test_a_private_image_is_pulled_with_its_connections_login_that_no_command_line_shows(tmp_path, registry):
    spec = {"name": "private", "kind": "batch", "target": "local", "local": {"run_dir": str(tmp_path / "runs")}}
    refused = LOCAL.submit(private(registry, {**spec, "run": "true"}, login=False))
    status = wait_finished(LOCAL, refused, 90)
    assert status.state == JobState.FAILED
    assert "could not create the container" in status.message
    assert "unauthorized" in status.message.lower() or "authentication required" in status.message.lower()

    h = LOCAL.submit(private(registry, {**spec, "run": "ls /bin/busybox; sleep 2; echo pulled"}))
    run_dir = Path(h.data["run_dir"])
    token = base64.b64encode(f"{registry.login}:{registry.password}".encode()).decode()
    seen_ps = ""
    deadline = time.time() + 60
    while time.time() < deadline and not LOCAL.poll([h])[h.job_id].state.finished:
        seen_ps += subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        time.sleep(0.1)
    status = wait_finished(LOCAL, h, 60)
    lines = all_lines(LOCAL, h)
    assert status.state == JobState.SUCCEEDED, lines
    assert "/bin/busybox" in lines and "pulled" in lines
    assert registry.password not in seen_ps and token not in seen_ps
    assert registry.password not in "\n".join(lines)
    assert not (run_dir / "registry").exists()  # the login lived only until the container existed
    assert not any(registry.password in p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())


def test_a_private_image_on_an_ssh_host_and_in_slurm(ssh_fleet, slurm_cluster, registry):
    from flexorch_provider.backends.slurm import SlurmBackend

    host = ssh_fleet.hosts[3]
    spec = {"name": "private-ssh", "kind": "batch", "target": "ssh", "run": "ls /bin/busybox",
            "ssh": {"connection": FLEET_CONN, "hosts": [host.entry]}}  # fmt: skip
    h = SSH.submit(private(registry, spec))
    status = wait_finished(SSH, h, 90)
    assert status.state == JobState.SUCCEEDED, all_lines(SSH, h)
    assert "/bin/busybox" in all_lines(SSH, h)

    slurm = SlurmBackend()
    spec = {"name": "private-slurm", "kind": "batch", "target": "slurm", "run": "ls /bin/busybox; echo in-slurm"}
    h = slurm.submit(private(registry, spec))
    status = wait_finished(slurm, h, 90)
    lines = all_lines(slurm, h)
    assert status.state == JobState.SUCCEEDED, lines
    assert "/bin/busybox" in lines and "in-slurm" in lines
    out_dir = Path.home() / ".flexorch" / "slurm"
    assert not list(out_dir.glob(f"*-{h.job_id}.auth.json"))  # removed with the job
    leftovers = [
        p for p in out_dir.glob("flexorch-private-slurm*") if registry.password in p.read_text(errors="replace")
    ]
    assert leftovers == []


def test_a_host_without_a_runtime_is_skipped_by_placement_any(ssh_fleet, image):
    bare, boxed = ssh_fleet.hosts[2], ssh_fleet.hosts[3]
    import_image(image, boxed.user)
    only_python = ssh_fleet.base / "bin-python-only"
    only_python.mkdir(exist_ok=True)
    (only_python / "python3").unlink(missing_ok=True)
    (only_python / "python3").symlink_to(shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3")
    original = bare.config.read_text()
    bare.stop()
    bare.config.write_text(re.sub(r"^SetEnv PATH=.*$", f"SetEnv PATH={only_python}", original, flags=re.M))
    bare.start()
    try:
        w = load_workload({"name": "boxed-any", "kind": "batch", "target": "ssh", "image": IMAGE,
                           "container": {"pull": "never"}, "run": "ls /bin/busybox",
                           "ssh": {"connection": FLEET_CONN, "hosts": [bare.entry, boxed.entry], "placement": "any"}})  # fmt: skip
        h = SSH.submit(ResolvedJob.for_run(w, f"d/boxed-any/{time.time_ns()}/-1"))
        assert h.job_id.endswith("@" + boxed.entry), h.job_id
        skipped = [n for n in h.notes if bare.address in n]
        assert skipped and "no container runtime here: looked for podman and docker" in skipped[0], h.notes
        assert wait_finished(SSH, h, 90).state == JobState.SUCCEEDED
    finally:
        bare.stop()
        bare.config.write_text(original)
        bare.start()


def test_a_dead_supervisor_leaves_no_container_once_its_job_is_followed(tmp_path, image):
    """The job runner's supervisor is killed (SIGKILL) while its container runs: the container would
    outlive it, so the job is reported lost with ``release`` and whoever follows it removes it."""
    from flexorch_provider.follower import Follower

    h = LOCAL.submit(job(tmp_path, "echo started; sleep 300"))
    name = "flexorch-" + h.job_id.replace("/", "-")
    deadline = time.time() + 30
    while "started" not in all_lines(LOCAL, h) and time.time() < deadline:
        time.sleep(0.2)
    pid = int((Path(h.data["run_dir"]) / "runner.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    follower = Follower(LOCAL, h)
    status = follower.poll()
    deadline = time.time() + 10
    while status.state != JobState.LOST and time.time() < deadline:
        time.sleep(0.2)
        status = follower.poll()
    assert status.state == JobState.LOST and status.release, status
    assert name in containers()  # still running: nobody has removed it yet
    step = follower.observe(status)
    assert step.event is not None and step.event.status == "failed"
    assert any("removed it" in n for n in step.notes), step.notes
    assert name not in containers()


def test_a_multi_node_group_runs_in_its_image_on_ssh_hosts_and_on_slurm_nodes(ssh_fleet, slurm_cluster, image):
    """Each node's container gets the contract (its own rank); on Slurm the nodes are partition multi's two."""
    from flexorch_provider.backends.slurm import SlurmBackend

    run = 'echo "node $FLEXORCH_NODE_RANK of $PET_NNODES meets at $MASTER_ADDR:$MASTER_PORT in $(ls /bin/busybox)"'
    hosts = ssh_fleet.hosts[2:4]
    for h in hosts:
        import_image(image, h.user)
    spec = {"name": "boxed-group", "kind": "training", "target": "ssh", "image": IMAGE, "container": {"pull": "never"},
            "run": run, "resources": {"nodes": 2}, "ssh": {"connection": FLEET_CONN, "hosts": [h.entry for h in hosts]}}  # fmt: skip
    handle = SSH.submit(ResolvedJob.for_run(load_workload(spec), f"d/group-boxed/{time.time_ns()}/-1"))
    status = wait_finished(SSH, handle, 90)
    lines = all_lines(SSH, handle)
    assert status.state == JobState.SUCCEEDED, lines
    port = handle.notes[-1].rsplit(":", 1)[1].split()[0]
    assert sorted(x for x in lines if " meets at " in x) == [
        f"[rank {r}] node {r} of 2 meets at {hosts[0].address}:{port} in /bin/busybox" for r in (0, 1)
    ]
    assert all(containers(h.user) == [] for h in hosts)

    slurm = SlurmBackend()
    spec = dict(spec, target="slurm", slurm={"partition": "multi"})
    spec.pop("ssh")
    handle = slurm.submit(ResolvedJob.for_run(load_workload(spec), f"d/group-boxed-slurm/{time.time_ns()}/-1"))
    status = wait_finished(slurm, handle, 120)
    lines = all_lines(slurm, handle)
    assert status.state == JobState.SUCCEEDED, lines
    said = sorted(x for x in lines if " meets at " in x)
    assert [x.split(" meets at ")[0] for x in said] == ["node 0 of 2", "node 1 of 2"], lines
    assert all(x.endswith(" in /bin/busybox") for x in said)
    assert containers(name_part=handle.job_id) == []
