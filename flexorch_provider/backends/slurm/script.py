"""The sbatch script and its options, rendered from the spec (no side effects)."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import shlex
import signal
import textwrap

from flexorch_provider import multinode
from flexorch_provider.backends.base import ResolvedJob, checkpoint_dir
from flexorch_provider.backends.slurm.container import REGISTRY_AUTH_VAR, container_lines
from flexorch_provider.exceptions import ConfigurationError
from flexorch_provider.runner.code import HOME_CODE_DIR
from flexorch_provider.runner.containers import auth_json
from flexorch_provider.runner.supervisor import warn_script

OUT_DIR = ".flexorch/slurm"  # relative to the submitting account's home (sbatch's cwd)
KEEP_OUTPUTS_DAYS = 14  # a job's .out/.sh/.rc files are removed this long after they were last written
# Run at each submit in the account's home (args: OUT_DIR, days, job name): create the
# directory; print the latest ended job of this name as "ID EXIT_CODE CLAIMED" (from its
# exit-code file; CLAIMED 1 when its outcome reached Airflow); then tidy: secrets files of
# jobs no longer in the queue (older than 10 minutes, so a submit in flight elsewhere keeps
# its own) and registry logins of such jobs, and outputs past their retention.
PREPARE_OUT_DIR = r"""mkdir -p -m 700 "$1" && cd "$1" || exit 1
latest=""
for f in "$3"-*.rc; do
    [ -f "$f" ] || continue
    id="${f#"$3"-}"; id="${id%.rc}"
    case "$id" in ""|*[!0-9]*) continue ;; esac
    if [ -z "$latest" ] || [ "$id" -gt "$latest" ]; then latest="$id"; fi
done
if [ -n "$latest" ]; then
    claimed=0; [ -f "$3-$latest.claimed" ] && claimed=1
    printf '%s %s %s\n' "$latest" "$(cat "$3-$latest.rc")" "$claimed"
fi
live="$(squeue -h -u "$(id -un)" -o %j 2>/dev/null)" || exit 0
find . -maxdepth 1 -type f -name '*.secrets' -mmin +10 | while read -r f; do
    n="${f#./}"; n="${n%.secrets}"
    printf '%s\n' "$live" | grep -qxF -- "$n" || rm -f -- "$f"
done
find . -maxdepth 1 -type f -name '*.auth.json' -mmin +10 | while read -r f; do
    n="${f#./}"; n="${n%-*.auth.json}"
    printf '%s\n' "$live" | grep -qxF -- "$n" || rm -f -- "$f"
done
find . -maxdepth 1 -type f -mtime +"$2" \( -name '*.out' -o -name '*.sh' -o -name '*.rc' -o -name '*.claimed' \) -exec rm -f -- {} +
find . -maxdepth 1 -type d -name '*.code' -mtime +"$2" -exec rm -rf -- {} +
exit 0
"""
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REQUEST_OPTIONS = {"--nodes", "--cpus-per-task", "--mem", "--gres", "--time", "--partition", "--account", "--qos"}


def job_name(job: ResolvedJob) -> str:
    return f"flexorch-{job.key_slug}"


# A multi-node job (flexorch_provider.multinode): the batch script, on the first node, exports what
# every node shares; srun starts one task per node, which adds its own rank. Node addresses are the
# nodes' NodeAddr (how slurmctld reaches them), in the allocation's order (SLURM_NODEID's).
SRUN_OPTIONS = ("--export=ALL", "--ntasks-per-node=1", "--kill-on-bad-exit=1")
NODE_TASK = "; ".join(multinode.shell_copies('"$SLURM_NODEID"')) + '; exec bash "$0"'


def multinode_lines(gpus_per_node: int) -> list[str]:
    addrs = (
        'for flexorch_node in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do '
        'scontrol -o show node "$flexorch_node" | tr " " "\\n" | sed -n "s/^NodeAddr=//p"; done | paste -sd, -'
    )
    return [
        f'export {multinode.NNODES}="$SLURM_NNODES"',
        f'export {multinode.ADDRS}="$({addrs})"',
        f"export {multinode.GPUS}={int(gpus_per_node)}",
        f'export {multinode.MASTER_ADDR}="${{{multinode.ADDRS}%%,*}}"',
        f"export {multinode.MASTER_PORT}=$(({multinode.SLURM_PORT_BASE} + SLURM_JOB_ID % {multinode.SLURM_PORT_SPAN}))",
    ]


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
        if w.warn_before is not None:
            # to the batch shell, which passes it on to the job's processes that handle it (on every node)
            lines.append(f"--signal=B:{w.warn_before.signal}@{max(1, int(w.warn_before.before.total_seconds()))}")
    for key in ("partition", "account", "qos"):
        if getattr(opts, key):
            lines.append(f"--{key}={getattr(opts, key)}")
    for key, value in opts.options.items():
        if value is True:
            lines.append(f"--{key}")
        elif value is not False:
            lines.append(f"--{key}={value}")
    return lines


def shell_word(value: str) -> str:
    """One bash word that is ``value`` exactly. sbatch refuses a script with a \r\n in it, so a
    value holding \r is written in ANSI-C quotes ($'...'), escapes and all; others as shlex quotes."""
    if "\r" not in value:
        return shlex.quote(value)
    escaped = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = "".join(escaped.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in value)
    return f"$'{out}'"


def _file_from_text(target: str, text: str, delimiter: str) -> list[str]:
    """Lines that write ``text`` byte for byte to ``target``: a quoted heredoc, or base64 where
    the text holds \r (sbatch refuses \r\n line breaks in a batch script)."""
    if "\r" not in text:
        return [f"cat > {target} <<'{delimiter}'", text, delimiter]
    encoded = base64.b64encode(text.encode()).decode()
    return [f"base64 -d > {target} <<'{delimiter}'", *textwrap.wrap(encoded, 76), delimiter]


def _echo_safe(text: str) -> str:
    """``text`` for inside a double-quoted echo: only letters, digits and path punctuation kept."""
    return re.sub(r"[^A-Za-z0-9_./~+,=@ -]", "?", text)


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
    where = (
        f"over SSH on the login node of connection {_echo_safe(w.slurm.connection)}"
        if w.slurm.connection
        else "with the local sbatch"
    )
    secret_names = ", ".join(sorted(job.secrets)) or "none"
    if w.image and w.container.registry_connection:
        secret_names += (
            f"; the login of connection {_echo_safe(w.container.registry_connection)} for the image's registry"
        )
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in sbatch_options(job))]
    lines += [
        "# written by flexorch: the run key, environment, setup and run of one task",
        f"# submitted {where}, from the account's home, as: sbatch --parsable < this script",
        f"# secrets ({secret_names}) are not in it: they go to {OUT_DIR}/{job_name(job)}.secrets (0600),",
        "# sourced below and deleted at once (a job that never starts: by cancel, or the next submit's sweep)",
        f"export FLEXORCH_RUN_KEY={shlex.quote(job.run_key)}",
        'export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"',
        *(f"export {k}={shell_word(v)}" for k, v in job.env.items()),
        f'flexorch_dir="$SLURM_SUBMIT_DIR/{OUT_DIR}"',
        'flexorch_rc="$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.rc"',
        'flexorch_secrets="$flexorch_dir/$SLURM_JOB_NAME.secrets"',
        'if [ -f "$flexorch_secrets" ]; then . "$flexorch_secrets"; rm -f "$flexorch_secrets"; fi',
        'trap \'code=$?; echo "$code" > "$flexorch_rc"; rm -f "$flexorch_secrets"\' EXIT',
    ]
    warn = w.warn_before.signal if w.warn_before is not None and not w.image else None
    if warn and w.warn_before is not None:
        lines += cancel_with_warning(warn, math.ceil(w.warn_before.before.total_seconds()), w.resources.nodes > 1)
    if "FLEXORCH_RESTART_COUNT" in job.env:  # a requeue (scontrol requeue, preemption) is a restart too
        lines += [
            "export FLEXORCH_RESTART_COUNT=$((FLEXORCH_RESTART_COUNT + ${SLURM_RESTART_COUNT:-0}))",
            'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then export FLEXORCH_RESTART_CAUSE=requeued; fi',
        ]
    if w.checkpoint_dir:
        folder = checkpoint_dir(job)
        where = shell_word(folder) if folder.startswith("/") else f'"$SLURM_SUBMIT_DIR"/{shell_word(folder)}'
        lines += [f"export FLEXORCH_CHECKPOINT_DIR={where}", 'mkdir -p -m 700 "$FLEXORCH_CHECKPOINT_DIR" || exit 1']
    if w.resources.nodes > 1:
        lines += multinode_lines(w.resources.gpus.count if w.resources.gpus else 0)
    if job.code is not None:
        lines += code_lines(job.code.digest)
    if job.workdir:
        lines.append(
            f'cd {shell_word(job.workdir)} 2>/dev/null || {{ echo "[flexorch] workdir {_echo_safe(job.workdir)} '
            'does not exist on $(hostname): create it there, or fix workdir in the spec" >&2; exit 1; }'
        )
    setup = '"$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.setup.sh"' if job.setup else None
    if job.setup and setup:
        lines += _file_from_text(setup, job.setup, delimiter)
        if not w.image:  # with a warning, in the background: a cancel's trap runs at once, not after it
            lines.append(f"bash -e {setup} & wait $! || exit $?" if warn else f"bash -e {setup} || exit $?")
    script = '"$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.sh"'
    lines += _file_from_text(script, (f"trap : {warn}\n" if warn else "") + run, delimiter)
    srun = f"srun {' '.join(SRUN_OPTIONS)} bash -c {shlex.quote(NODE_TASK)} {script}"
    if w.image:  # the job runs in its image on every target
        lines += container_lines(job, setup, script, [*job.env, *job.secrets])
    elif warn:
        lines += [
            # one node: the job in its own process group, several: the srun step (one task per node); the
            # batch shell passes the warnings on (flexorch_warn)
            f"{srun} &" if w.resources.nodes > 1 else f"setsid bash {script} &",
            "flexorch_child=$!",
            f"trap flexorch_warn {warn}",
            'while :; do wait "$flexorch_child"; flexorch_code=$?; kill -0 "$flexorch_child" 2>/dev/null || break; done',
            'if [ -n "$flexorch_cancel" ]; then scancel "$SLURM_JOB_ID"; fi',  # it ended on its own after a cancel
            'exit "$flexorch_code"',
        ]
    elif w.resources.nodes > 1:
        # one task per node, each with its node rank; one node failing ends the step on all
        lines.append(srun)
    else:
        lines.append(f"bash {script}")
    return "\n".join(lines) + "\n"


CANCEL_SIGNAL = "URG"  # flexorch's cancel of a job with a warning, to its batch shell (ignored by default)


def cancel_with_warning(warn: str, before: int, nodes: bool) -> list[str]:
    """The batch shell's part of a cancel with a warning: the worker sends it SIGURG (``scancel --batch``);
    it sends the job the warning signal at once (its process group, or every node's step), and has Slurm
    cancel the job ``before`` seconds later (or when the job has ended on its own). Before the job runs
    there is nothing to warn: the cancel is at once."""
    signum = int(getattr(signal, "SIG" + warn))
    if nodes:  # on every node, in a step beside the job's: the job's processes there that handle it
        each = shlex.quote(warn_script(warn, signum, slurm_job=True))
        warn_job = f"srun --overlap --ntasks-per-node=1 --export=ALL bash -c {each} >/dev/null 2>&1"
    else:  # the processes of the job's group that handle it (one that would die of it is left alone)
        warn_job = "(" + warn_script(warn, signum, '"$flexorch_child"') + ")"
    return [
        "flexorch_child=; flexorch_cancel=",
        # the batch shell ignores the signal meanwhile: it is a process of the job too
        f"flexorch_warn() {{ trap '' {warn}; {warn_job}; trap flexorch_warn {warn}; }}",
        "flexorch_stop() {",
        f"  trap '' {CANCEL_SIGNAL}",
        '  if [ -z "$flexorch_child" ]; then scancel "$SLURM_JOB_ID"; return; fi',
        f'  flexorch_cancel=1; echo "[flexorch] cancelled: SIG{warn} to the job, its end in {before}s (save what you need)"',
        "  flexorch_warn",
        f'  (sleep {before}; scancel "$SLURM_JOB_ID") &',
        "}",
        f"trap flexorch_stop {CANCEL_SIGNAL}",
    ]


def code_lines(digest: str) -> list[str]:
    """The job starts in its own copy (hard links) of its code bundle, which the submit put in the
    account's ``~/.flexorch/code`` on the login node: the nodes must see that home."""
    kept = f'"$SLURM_SUBMIT_DIR/{HOME_CODE_DIR}/{digest}"'
    missing = (
        f"[flexorch] the code of this job (bundle {digest[:12]}) is not in $SLURM_SUBMIT_DIR/{HOME_CODE_DIR} on "
        "$(hostname): jobs with code need the home of the login node on the nodes"
    )
    return [
        'flexorch_code="$flexorch_dir/$SLURM_JOB_NAME-$SLURM_JOB_ID.code"',
        f'cp -al {kept} "$flexorch_code" || {{ echo "{missing}" >&2; exit 1; }}',
        f'export FLEXORCH_CODE_DIR="$flexorch_code" FLEXORCH_CODE_DIGEST={digest}',
        'cd "$flexorch_code"',
    ]


def secrets_file(job: ResolvedJob) -> bytes:
    """The 0600 file the script sources: the secrets, and a private image's registry login in the
    form the cluster's runtime reads it (podman: an auth file's text the script writes out;
    apptainer: its APPTAINER_DOCKER_USERNAME/PASSWORD variables)."""
    values = dict(job.secrets)
    if job.registry and job.workload.image:
        if job.workload.slurm.container == "apptainer":
            values.update(
                APPTAINER_DOCKER_USERNAME=job.registry["login"], APPTAINER_DOCKER_PASSWORD=job.registry["password"]
            )
        else:
            values[REGISTRY_AUTH_VAR] = auth_json(job.registry)
    return "".join(f"export {k}={shell_word(v)}\n" for k, v in values.items()).encode()


def has_secrets_file(job: ResolvedJob) -> bool:
    return bool(job.secrets or (job.registry and job.workload.image))
