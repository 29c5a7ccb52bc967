"""The runtime command lines the job runner builds: podman and docker differ in how GPUs and a
registry login reach them; no value is ever a word of them. (podman runs for real in
tests/integration/test_containers.py; docker cannot run here, so its lines are checked word by word.)"""

from __future__ import annotations

import base64
import json
import stat

from flexorch_provider.runner import containers


def _job(runtime_path, gpus=None, mounts=None):
    return {"job_id": "slug-abc/2", "run_key": "d/t/r/-1", "gpu_indices": gpus or [],
            "container": {"image": "ghcr.io/acme/train:1.4", "pull": "always", "runtime_path": runtime_path,
                          "mounts": mounts or []}}  # fmt: skip


def test_docker_gets_gpus_as_one_device_list_and_its_login_as_a_config_folder(tmp_path):
    containers.write_registry_login(str(tmp_path), {"registry": "ghcr.io", "login": "bot", "password": "p@ss:w0rd"})
    argv = containers.create_argv(_job("/usr/bin/docker", gpus=[1, 3]), str(tmp_path), "/srv/work", ["B", "A"])
    assert argv[:4] == ["/usr/bin/docker", "--config", str(tmp_path / "registry"), "create"]
    assert "--authfile" not in argv and argv[argv.index("--gpus") + 1] == "device=1,3"
    assert "--device" not in argv and argv[argv.index("--pull") + 1] == "always"
    assert argv[argv.index("-w") + 1] == "/srv/work" and f"{tmp_path}:{tmp_path}" in argv
    i = argv.index("ghcr.io/acme/train:1.4")
    assert argv[i - 4 : i] == ["-e", "A", "-e", "B"]  # names only, sorted
    assert "p@ss:w0rd" not in " ".join(argv)


def test_podman_gets_cdi_devices_and_an_authfile(tmp_path):
    containers.write_registry_login(str(tmp_path), {"registry": "10.0.0.1:5000", "login": "bot", "password": "pw"})
    argv = containers.create_argv(_job("/usr/bin/podman", gpus=[0, 2]), str(tmp_path), str(tmp_path), [])
    assert argv[:4] == ["/usr/bin/podman", "--log-level", "error", "create"]
    assert argv[4:6] == ["--authfile", str(tmp_path / "registry" / "config.json")]
    assert [argv[i + 1] for i, w in enumerate(argv) if w == "--device"] == ["nvidia.com/gpu=0", "nvidia.com/gpu=2"]
    assert "--gpus" not in argv


def test_the_login_file_is_private_reads_back_and_goes(tmp_path):
    login = {"registry": "ghcr.io", "login": "bot", "password": "tok:with:colons"}
    containers.write_registry_login(str(tmp_path), login)
    path = tmp_path / "registry" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    auths = json.loads(path.read_text())["auths"]
    assert base64.b64decode(auths["ghcr.io"]["auth"]).decode() == "bot:tok:with:colons"
    assert containers.registry_password(str(tmp_path)) == "tok:with:colons"
    containers.forget_registry_login(str(tmp_path))
    assert not path.parent.exists() and containers.registry_password(str(tmp_path)) is None
    assert containers.create_argv(_job("/usr/bin/podman"), str(tmp_path), str(tmp_path), [])[3] == "create"


def test_inside_the_container_the_claimed_gpus_count_from_zero():
    env = containers.container_env({"gpu_indices": [5, 7]}, {"CUDA_VISIBLE_DEVICES": "5,7", "PATH": "/host", "X": "1"})
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1", "X": "1"}  # the image's own PATH, not the host's


def test_the_names_kept_from_the_runtime_and_the_words_of_container_sh():
    from flexorch_provider.runner.containers import sh_quote, steers_runtime

    assert steers_runtime("LD_PRELOAD") and steers_runtime("DOCKER_HOST") and not steers_runtime("MODEL_DIR")
    assert sh_quote("it's\na\r\n") == "'it'\\''s\na\r\n'"


def test_a_secret_may_not_be_named_like_a_runtime_variable():
    import pytest

    from flexorch_provider.exceptions import SpecError
    from flexorch_provider.resolve import load_workload

    with pytest.raises(SpecError, match="secret LD_PRELOAD: a secret may not have the name of a variable that steers"):
        load_workload({"name": "j", "kind": "batch", "run": "x", "secrets": {"LD_PRELOAD": "variable:x"}})
