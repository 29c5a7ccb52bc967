"""A Slurm job with ``image``: the step runs in that image, with the cluster's runtime
(``slurm.container``): podman (run on the node), apptainer (``exec docker://...``) or pyxis
(``srun --container-image``). Setup and run both run inside the image, through a small
wrapper; env and secret values pass by name (``-e NAME`` / the environment), never as words."""

from __future__ import annotations

import shlex

from flexorch_provider import multinode
from flexorch_provider.backends.base import ResolvedJob

# run inside the image: $1 the setup script ("" for none), $2 the run script; a multi-node job's node
# adds its rank and the launchers' names for the group (flexorch_provider.multinode)
WRAPPER = (
    r"""sh_=sh; command -v bash >/dev/null 2>&1 && sh_=bash
if [ -n "${FLEXORCH_NNODES:-}" ] && [ -n "${SLURM_NODEID:-}" ]; then """
    + "; ".join(multinode.shell_copies('"$SLURM_NODEID"'))
    + r"""; fi
if [ -n "$1" ]; then "$sh_" -e "$1" || { c=$?; echo "[flexorch] setup failed with exit code $c; run is skipped"; exit $c; }; fi
exec "$sh_" "$2"
"""
)
REGISTRY_AUTH_VAR = "FLEXORCH_REGISTRY_AUTH"  # podman: the registry login's auth file text, from the secrets file
# what the batch script exported for every node, and the node's own id (the rank)
MULTI_NODE_ENV = (
    multinode.NNODES, multinode.ADDRS, multinode.GPUS, multinode.MASTER_ADDR, multinode.MASTER_PORT, "SLURM_NODEID"
)  # fmt: skip


def _q(text: str) -> str:
    """A double-quoted bash word that is ``text`` exactly (nothing in it expands)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`") + '"'


def container_lines(job: ResolvedJob, setup: str | None, script: str, env_names: list[str]) -> list[str]:
    """The lines that run ``script`` (after ``setup``) in the job's image on each node.

    ``setup`` and ``script`` are double-quoted shell words of files in the job's output folder;
    ``env_names`` are the variables the job gets (the script exported or sourced them)."""
    w = job.workload
    assert w.image is not None
    runtime = w.slurm.container
    multi = w.resources.nodes > 1
    names = [*env_names, "FLEXORCH_RUN_KEY", *(MULTI_NODE_ENV if multi else ())]
    ctr = '"flexorch-$SLURM_JOB_NAME-$SLURM_JOB_ID"'
    wrapper = '"$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.container.sh"'
    out = [f"cat > {wrapper} <<'FLEXORCH_WRAPPER_END'", WRAPPER.rstrip("\n"), "FLEXORCH_WRAPPER_END"]
    # the job's own files only (read-only), never the folder where other jobs' secrets wait for their start
    own = [wrapper, script, *([setup] if setup else [])]
    bind_words = [*(f"{f}:{f}:ro" for f in own), '"$PWD":"$PWD"']
    if w.checkpoint_dir:  # the run key's checkpoint folder (the script made it), at its own path inside
        bind_words.append('"$FLEXORCH_CHECKPOINT_DIR":"$FLEXORCH_CHECKPOINT_DIR"')
    for m in w.container.mounts:
        host = _q(m.host) if m.host.startswith("/") else '"$HOME"/' + _q(m.host)
        bind_words.append(f"{host}:{_q(m.path)}" + (":ro" if m.read_only else ""))
    gpus = bool(w.resources.gpus and w.resources.gpus.count)
    inner = ["/bin/sh", wrapper, setup or '""', script]
    srun = "srun --kill-on-bad-exit=1 --export=ALL " if multi else ""
    if runtime == "pyxis":
        return [
            *out,
            f"srun{' --kill-on-bad-exit=1' if multi else ''} --export=ALL --container-image={w.image} "
            f'--container-mounts={",".join(bind_words)} --container-workdir="$PWD" ' + " ".join(inner),
        ]
    if runtime == "apptainer":
        argv = ["apptainer", "exec", "--cleanenv", *(["--nv"] if gpus else [])]
        for b in bind_words:
            argv += ["--bind", b]
        argv += ["--pwd", '"$PWD"']
        for name in names:
            argv += ["--env", f'{name}="${{{name}}}"']
        return [*out, srun + " ".join([*argv, f"docker://{w.image}", *inner])]
    argv = [
        "podman",
        "--log-level",
        "error",
        "run",
        "--rm",
        "--name",
        ctr,
        "--network",
        "host",
        "--pull",
        w.container.pull,
    ]
    if w.resources.shm:
        argv += ["--shm-size", f"{int(w.resources.shm)}b"]
    login = bool(w.container.registry_connection)
    auth = '"$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.auth.json"'
    if login:  # pulled with the login first; the login is gone before the job's own code runs
        argv[argv.index("--pull") + 1] = "never"
    if gpus:
        argv.append("$flexorch_gpus")  # unquoted on purpose: one word per device
    for b in bind_words:
        argv += ["-v", b]
    argv += ["-w", '"$PWD"']
    for name in names:
        argv += ["-e", name]
    # the batch script runs on the first node (node 0): its container goes with the job, however it ends
    first = ctr[:-1] + '-0"' if multi else ctr
    out.append(
        f'trap \'code=$?; podman rm -f -t 0 {first} >/dev/null 2>&1; echo "$code" > "$flexorch_rc"; '
        f'rm -f "$flexorch_secrets"{" " + auth if login else ""}\' EXIT'
    )
    if login:  # the login as an auth file, this account's only, for the pull alone
        out.append(
            f'if [ -n "${{{REGISTRY_AUTH_VAR}:-}}" ]; then (umask 077 && printf %s "${REGISTRY_AUTH_VAR}" > {auth}); '
            f"fi; unset {REGISTRY_AUTH_VAR}"
        )
        pull = f"podman --log-level error pull --authfile {auth} {w.image} >/dev/null"
        if w.container.pull == "missing":
            pull = f"podman image exists {w.image} || {pull}"
        if w.container.pull != "never":
            out.append(
                f'{pull}; flexorch_pulled=$?; rm -f {auth}; [ "$flexorch_pulled" = 0 ] || exit "$flexorch_pulled"'
            )
        out.append(f"rm -f {auth}")
    if gpus:  # the GPUs Slurm gave the job, as CDI devices; inside the container they count from 0
        out += [
            'flexorch_gpus=""; n=0',
            'for i in ${CUDA_VISIBLE_DEVICES//,/ }; do flexorch_gpus="$flexorch_gpus --device nvidia.com/gpu=$i"; '
            "n=$((n+1)); done",
            'export CUDA_VISIBLE_DEVICES="$(seq -s, 0 $((n-1)))"',
        ]
    if multi:  # one container per node, named after its node (nodes may share an image store); removed as it ends
        del argv[argv.index("--name") : argv.index("--name") + 2]
        per_node = (
            'n="$0-$SLURM_NODEID"; trap \'podman rm -f -t 0 "$n" >/dev/null 2>&1\' EXIT; trap "exit 143" TERM INT; '
            'podman --log-level error run --name "$n" "$@"'
        )
        assert argv[:4] == ["podman", "--log-level", "error", "run"]
        words = ["/bin/sh", "-c", shlex.quote(per_node), ctr, *argv[4:], w.image, *inner]
        return [*out, srun + " ".join(words)]
    return [*out, srun + " ".join([*argv, w.image, *inner])]
