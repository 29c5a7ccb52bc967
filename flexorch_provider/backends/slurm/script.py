"""The sbatch script and its options, rendered from the spec (no side effects)."""

from __future__ import annotations

import hashlib
import math
import re
import shlex

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.exceptions import ConfigurationError

OUT_DIR = ".flexorch/slurm"  # relative to the submitting account's home (sbatch's cwd)
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REQUEST_OPTIONS = {"--nodes", "--cpus-per-task", "--mem", "--gres", "--time", "--partition", "--account", "--qos"}


def job_name(job: ResolvedJob) -> str:
    return f"flexorch-{job.key_slug}"


def sbatch_options(job: ResolvedJob) -> list[str]:
    w = job.workload
    opts = w.slurm
    res = w.resources
    lines = [f"--job-name={job_name(job)}", f"--output={OUT_DIR}/%x-%j.out", "--open-mode=append", "--export=NONE"]
    lines.append(f"--nodes={res.nodes}")
    if res.nodes > 1:
        lines.append("--ntasks-per-node=1")
    if res.cpus:
        lines.append(f"--cpus-per-task={math.ceil(res.cpus)}")
    if res.memory:
        lines.append(f"--mem={math.ceil(res.memory / 2**20)}M")
    if res.gpus and res.gpus.count:
        gpu_type = f"{res.gpus.type.lower()}:" if res.gpus.type else ""
        lines.append(f"--gres=gpu:{gpu_type}{res.gpus.count}")
    if job.timeout_s:
        lines.append(f"--time={math.ceil(job.timeout_s / 60)}")
    for key in ("partition", "account", "qos"):
        if getattr(opts, key):
            lines.append(f"--{key}={getattr(opts, key)}")
    for key, value in opts.options.items():
        if value is True:
            lines.append(f"--{key}")
        elif value is not False:
            lines.append(f"--{key}={value}")
    return lines


def render_script(job: ResolvedJob) -> str:
    """The exact batch script. User values appear only as quoted words or inside a quoted heredoc."""
    for key in (*job.env, *job.secrets):
        if not ENV_KEY.match(key):
            raise ConfigurationError(f"environment variable name {key!r} is not valid in a shell")
    w = job.workload
    run = job.run if isinstance(job.run, str) else shlex.join(job.run)
    body = f"{job.setup or ''}\n{run}"
    salt = 0
    delimiter = ""
    while not delimiter or delimiter in body:  # a heredoc end marker the text cannot contain
        delimiter = "FLEXORCH_" + hashlib.sha256(f"{salt}:{body}".encode()).hexdigest()[:16].upper()
        salt += 1
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in sbatch_options(job))]
    lines += [
        "# written by flexorch: the run key, environment, setup and run of one task",
        f"export FLEXORCH_RUN_KEY={shlex.quote(job.run_key)}",
        'export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"',
        *(f"export {k}={shlex.quote(v)}" for k, v in job.env.items()),
        f'flexorch_dir="$SLURM_SUBMIT_DIR/{OUT_DIR}"',
        'flexorch_rc="$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.rc"',
        'flexorch_secrets="$flexorch_dir/$SLURM_JOB_NAME.secrets"',
        'if [ -f "$flexorch_secrets" ]; then . "$flexorch_secrets"; fi',
        'trap \'code=$?; echo "$code" > "$flexorch_rc"; rm -f "$flexorch_secrets"\' EXIT',
    ]
    if w.resources.nodes > 1:
        lines += [
            'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            'export MASTER_PORT="${MASTER_PORT:-29500}"',
            'export WORLD_SIZE="$SLURM_NNODES"',
        ]
    if job.workdir:
        lines.append(f"cd {shlex.quote(job.workdir)} || exit 1")
    if job.setup:
        lines += [f"bash -e <<'{delimiter}' || exit $?", job.setup, delimiter]
    script = '"$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.sh"'
    lines += [f"cat > {script} <<'{delimiter}'", run, delimiter]
    if w.resources.nodes > 1:
        # one task per node; each learns its rank from srun
        lines.append(
            f'srun --kill-on-bad-exit=1 bash -c \'export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID"; '
            f'exec bash "$0"\' {script}'
        )
    else:
        lines.append(f"bash {script}")
    return "\n".join(lines) + "\n"


def secrets_file(job: ResolvedJob) -> bytes:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in job.secrets.items()).encode()
