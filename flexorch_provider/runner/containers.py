"""Jobs with an image: the same supervisor, the step is a container.

``create`` makes the container (named after the job, host network, the run directory and
workdir mounted, GPUs passed as devices, pull policy applied) and ``start --attach`` is the
supervised step: its output is the job's log, its exit code the job's. Env values reach the
container by name only (``-e NAME``: the runtime reads the value from its own environment), so no
value is ever on a command line; with podman the secrets go through its secret store, mounted as
files that ``container.sh`` reads into their variables, so ``podman inspect`` does not show them
either. When the step ends, however it
ends, the container and its secrets are removed.
"""

import json
import os

# base64, shutil and subprocess are imported where used: a submit without an image must not pay
# for them (every module a runner mode imports is read from the zipapp on each start)

RUNTIMES = ("podman", "docker")  # the order "auto" looks for them
CREATE_TIMEOUT_S = 600  # a pull of a large image
REGISTRY_DIR = "registry"  # in a run dir: config.json with the registry login, only until the container exists


# names that steer the container runtime or the dynamic loader of the process that runs it: a job's
# env must not reach the runtime with them (``LD_PRELOAD`` would run the job's code on the host,
# outside its image). Inside the container the job still gets them, exported by container.sh.
STEERING_PREFIXES = ("LD_", "DYLD_", "CONTAINERS_", "CONTAINER_", "DOCKER_", "PODMAN_", "BUILDAH_", "XDG_")
STEERING_NAMES = (
    "REGISTRY_AUTH_FILE",
    "GODEBUG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


def steers_runtime(name):
    return name in STEERING_NAMES or name.startswith(STEERING_PREFIXES)


def sh_quote(value):
    """One POSIX shell word that is ``value`` exactly (newlines and all)."""
    return "'" + value.replace("'", "'\\''") + "'"


class NoRuntime(Exception):
    """No container runtime here (or not the one the spec names)."""


def find_runtime(want):
    """The path of the runtime to use: ``want`` is auto, podman or docker."""
    names = RUNTIMES if want in (None, "", "auto") else (want,)
    import shutil

    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise NoRuntime("no container runtime here: looked for %s on PATH" % " and ".join(names))


def container_name(job):
    """``flexorch-<run key slug>-<attempt>``: unique per attempt, found again by cancel."""
    return "flexorch-" + job.get("job_id", "job").replace("/", "-")


SECRETS_IN = "/run/secrets/flexorch"  # where podman mounts the job's secrets inside the container


def wrapper(job, run_dir, steering=None, secret_files=()):
    """The script the container runs: the job's variables that must not reach the runtime process
    (``steering``, name → value: they are exported here, inside the image), the secrets podman
    mounted (``secret_files``: read into their variables byte for byte), then setup (a failure
    skips run), then run, with bash where the image has it. Written into the (mounted) run directory."""
    lines = ["#!/bin/sh"]
    lines += ["export %s=%s" % (name, sh_quote(value)) for name, value in sorted((steering or {}).items())]
    for name in sorted(secret_files):  # the x keeps trailing newlines, which $(...) would strip
        lines.append(
            '%s="$(cat %s/%s; printf x)"; %s="${%s%%x}"; export %s' % (name, SECRETS_IN, name, name, name, name)
        )
    lines.append('sh_="sh"; command -v bash >/dev/null 2>&1 && sh_="bash"')
    from .supervisor import keep_shell  # the warning signal must not end the job's own shell (as on the host)

    if job.get("setup"):
        with open(os.path.join(run_dir, "setup.sh"), "w") as f:
            f.write(keep_shell(job) + job["setup"])
        lines.append(
            '"$sh_" -e %s/setup.sh || { c=$?; echo "[flexorch] setup failed with exit code $c; '
            'run is skipped"; exit $c; }' % run_dir
        )
    if job.get("argv"):
        lines.append('exec "$@"')
    else:
        with open(os.path.join(run_dir, "run.sh"), "w") as f:
            f.write(keep_shell(job) + (job.get("script") or ""))
        lines.append('exec "$sh_" %s/run.sh' % run_dir)
    path = os.path.join(run_dir, "container.sh")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_registry_login(run_dir, login):
    """The registry login as the runtimes read it (``{"auths": {REGISTRY: {"auth": base64}}}``, the
    format of podman's --authfile and of docker's config.json), private to this account."""
    folder = os.path.join(run_dir, REGISTRY_DIR)
    os.mkdir(folder, 0o700)
    fd = os.open(os.path.join(folder, "config.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(auth_json(login))


def auth_json(login):
    """``login`` ({registry, login, password}) as an auth file's text."""
    import base64

    token = base64.b64encode(("%s:%s" % (login["login"], login["password"])).encode("utf-8")).decode("ascii")
    auths = {login["registry"]: {"auth": token}}
    if login["registry"] == "docker.io":  # docker still looks Docker Hub up under its v1 address
        auths["https://index.docker.io/v1/"] = {"auth": token}
    return json.dumps({"auths": auths})


def registry_password(run_dir):
    """The password in the run's registry login (to mask it), or None."""
    try:
        with open(os.path.join(run_dir, REGISTRY_DIR, "config.json")) as f:
            auths = json.load(f)["auths"]
        token = next(iter(auths.values()))["auth"]
        import base64  # binascii.Error is a ValueError

        return base64.b64decode(token).decode("utf-8").split(":", 1)[1]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def forget_registry_login(run_dir):
    """Delete the registry login: it is needed only to create the container."""
    path = os.path.join(run_dir, REGISTRY_DIR)
    if os.path.isdir(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def login_flags(runtime, run_dir, login=None):
    """The runtime's flags that point it at the run's registry login (none without one; ``login``
    None: whether the run directory holds one): podman ``--authfile FILE`` (a create flag),
    docker ``--config DIR`` (a global flag)."""
    folder = os.path.join(run_dir, REGISTRY_DIR)
    if login is None:
        login = os.path.exists(os.path.join(folder, "config.json"))
    if not login:
        return [], []
    if os.path.basename(runtime) == "docker":
        return ["--config", folder], []
    return [], ["--authfile", os.path.join(folder, "config.json")]


def secret_name(job, name):
    """The runtime secret that holds the job's secret ``name`` (podman): per attempt, so the next
    attempt's never meets this one's."""
    return "%s.%s" % (container_name(job), name)


def uses_runtime_secrets(runtime):
    """podman keeps a secret's value out of ``inspect`` when it is mounted as a file (``--secret
    NAME,type=mount``; as ``type=env`` a running container's Config.Env shows it); docker has no
    such store outside swarm, so there a secret is an ``-e NAME`` like any variable."""
    return os.path.basename(runtime) == "podman"


def create_secrets(runtime, job, secrets, env):
    """Put each secret value in podman's secret store (read from stdin: never on a command line);
    the container gets them as files (``--secret``) that its wrapper reads into the environment."""
    import subprocess

    for name, value in sorted(secrets.items()):
        stored = secret_name(job, name)
        subprocess.run(
            [runtime, "secret", "rm", stored], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60
        )
        done = subprocess.run(
            [runtime, "secret", "create", stored, "-"],
            input=value.encode(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        if done.returncode != 0:
            raise OSError("podman secret create failed: %s" % done.stderr.decode("utf-8", "replace").strip()[-300:])


def remove_secrets(runtime, job, env=None):
    """Remove the attempt's secrets from podman's store (idempotent)."""
    import subprocess

    if not uses_runtime_secrets(runtime):
        return
    prefix = container_name(job) + "."
    try:
        listed = subprocess.run(
            [runtime, "secret", "ls", "--format", "{{.Name}}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60,
        ).stdout.decode("utf-8", "replace")
        mine = [n for n in listed.split() if n.startswith(prefix)]
        if mine:
            subprocess.run(
                [runtime, "secret", "rm", *mine], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60
            )
    except (OSError, subprocess.SubprocessError):
        pass


def create_argv(job, run_dir, workdir, env_names, login=None, secret_names=()):
    """``<runtime> create ...``: names only for the environment, every user value a separate word;
    with podman the secrets (``secret_names``) come from its secret store, not the environment."""
    spec = job["container"]
    runtime = spec["runtime_path"]
    docker = os.path.basename(runtime) == "docker"
    global_login, create_login = login_flags(runtime, run_dir, login)
    argv = [
        runtime,
        *quiet(runtime),
        *global_login,
        "create",
        *create_login,
        "--name",
        container_name(job),
        "--network",
        "host",
        "--pull",
        spec.get("pull") or "missing",
        "--label",
        "io.flexorch.run-key=" + job.get("run_key", ""),
        "-v",
        "%s:%s" % (run_dir, run_dir),
        "-w",
        workdir,
    ]
    if workdir != run_dir:
        argv[-2:-2] = ["-v", "%s:%s" % (workdir, workdir)]
    checkpoints = (job.get("env") or {}).get("FLEXORCH_CHECKPOINT_DIR") if job.get("checkpoint_dir") else None
    if checkpoints:  # the run key's checkpoint folder, at the same path inside
        argv += ["-v", "%s:%s" % (checkpoints, checkpoints)]
    if spec.get("shm"):
        argv += ["--shm-size", "%db" % int(spec["shm"])]
    for mount in spec.get("mounts") or []:
        host = os.path.join(os.path.expanduser("~"), os.path.expanduser(mount["host"]))
        argv += ["-v", "%s:%s%s" % (host, mount["path"], ":ro" if mount.get("read_only") else "")]
    gpus = job.get("gpu_indices") or []
    if gpus:
        if docker:
            argv += ["--gpus", "device=" + ",".join(str(g) for g in gpus)]
        else:
            for g in gpus:
                argv += ["--device", "nvidia.com/gpu=%d" % g]
    stored = set(secret_names) if uses_runtime_secrets(runtime) else set()
    for name in sorted(env_names):
        if name in stored:
            argv += ["--secret", "%s,type=mount,target=%s/%s" % (secret_name(job, name), SECRETS_IN, name)]
        else:
            argv += ["-e", name]
    argv += [spec["image"], "/bin/sh", os.path.join(run_dir, "container.sh")]
    return argv + list(job.get("argv") or [])


def quiet(runtime):
    """podman's global flag that keeps its warnings (e.g. rootless mount notes) out of the job's log."""
    return ["--log-level", "error"] if os.path.basename(runtime) == "podman" else []


def container_env(job, env):
    """The container's environment: inside it the claimed GPUs are numbered from 0."""
    env = dict(env)
    if job.get("gpu_indices"):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(job["gpu_indices"])))
    for key in ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR"):  # the image's own, not the host's
        env.pop(key, None)
    return env


def remove(job):
    """Remove the job's container, running or not, and its secrets (idempotent); True when no
    container is left."""
    spec = job.get("container") or {}
    runtime = spec.get("runtime_path")
    if not runtime:
        return True
    import subprocess

    remove_secrets(runtime, job)
    try:
        subprocess.run(
            [runtime, "rm", "-f", "-t", "0", container_name(job)]
            if os.path.basename(runtime) == "podman"
            else [runtime, "rm", "-f", container_name(job)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True
