"""The supervisor: detach, run setup then the job in a process group of their own, stream the
output to the log with secrets masked, enforce timeout and cancel, write the result."""

import json
import os
import select
import signal
import subprocess
import sys
import time

from .files import write_atomic
from .logs import Masker
from .procs import become_subreaper, kill_group, reaped_within, warn_group
from .status import CANCEL_EXIT, TIMEOUT_EXIT

BASE_ENV_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SHELL", "TMPDIR")
# what a container runtime itself needs from the runner's environment (not passed into containers)
RUNTIME_ENV_KEYS = (
    "XDG_RUNTIME_DIR",
    "CONTAINERS_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINER_HOST",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
)


def base_environment(job, run_dir):
    """What a job's processes see: a few of ours (no worker secrets), the job's env, FLEXORCH_RUN_DIR."""
    env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
    env.update(job.get("env") or {})
    env["FLEXORCH_RUN_DIR"] = run_dir
    return env


def workdir_of(job, run_dir):
    """The job's working directory: its workdir (relative to home) or the run directory; for a job with
    code, its workdir relative to its code tree, or that tree."""
    code_dir = (job.get("code") or {}).get("dir")
    if code_dir:
        return os.path.join(code_dir, os.path.expanduser(job.get("workdir") or ""))
    return os.path.join(os.path.expanduser("~"), os.path.expanduser(job.get("workdir") or run_dir))


def warn_script(sig, signum, group=None, slurm_job=False):
    """A POSIX sh script (dash, bash, busybox; builtins only) that sends SIG``sig`` (number ``signum``,
    at most 32) to every process it sees that handles it (``SigCgt`` in /proc; ``group``: a shell word,
    only that process group's; ``slurm_job``: only processes of this Slurm job on this node, by their
    environment), itself left out: a container's processes from an exec in it, a pod's from its preStop
    hook, a Slurm job's from its batch shell. A process that would die of it is left alone (a launcher
    such as torchrun, a ``sleep``)."""
    pick = (
        's=; read -r s 2>/dev/null < "$d/stat" || continue; set -- ${s##*) }; '
        '[ "$1" != Z ] && [ "$3" = %s ] || continue; ' % group
        if group
        else ""
    )
    if slurm_job:  # srun would forward it to every process of its step, launchers too: not srun
        pick += (
            'tr "\\0" "\\n" < "$d/environ" 2>/dev/null | grep -qx "SLURM_JOB_ID=$SLURM_JOB_ID" || continue; '
            # this node's (nodes that share a kernel, as on the test bed, see each other's processes)
            'tr "\\0" "\\n" < "$d/environ" 2>/dev/null | grep -qx "SLURMD_NODENAME=$SLURMD_NODENAME" || continue; '
            'c=; read -r c 2>/dev/null < "$d/comm"; [ "$c" = srun ] && continue; '
        )

    return (
        'for d in /proc/[0-9]*; do p=${d#/proc/}; [ "$p" = "$$" ] && continue; m=; '
        'while read -r k v; do [ "$k" = SigCgt: ] && m=$v; done 2>/dev/null < "$d/status"; '
        '[ -n "$m" ] || continue; '
        + pick
        + '[ $(( (0x${m#????????} >> %d) & 1 )) = 1 ] && kill -%s "$p" 2>/dev/null; done; :' % (signum - 1, sig)
    )


def keep_shell(job):
    """The first line of a job's shell script: the warning signal (job "warn") reaches the processes of the
    job that handle it; with ``trap :`` the script's own shell is one of them and outlives it (its default
    would end it, leaving its children)."""
    warn = job.get("warn")
    return "trap : %s\n" % warn["signal"] if warn else ""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # cancel, and a stop by hand

# the step in a process group of its own; Python 3.11+ does it without a preexec_fn, which
# keeps Popen on its fast path (vfork) instead of a fork that copies the supervisor
OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


class Supervisor(object):
    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.stop_reason = None  # "cancelled" | "timeout"
        with open(os.path.join(run_dir, "job.json")) as f:
            self.job = json.load(f)
        secrets_path = os.path.join(run_dir, "secrets.json")
        self.secrets = {}
        if os.path.exists(secrets_path):
            with open(secrets_path) as f:
                self.secrets = json.load(f)
            os.unlink(secrets_path)
        from .containers import registry_password

        password = registry_password(run_dir)
        self.masker = Masker(list(self.secrets.values()) + ([password] if password else []))
        self.log = open(os.path.join(run_dir, "log"), "ab", buffering=0)
        self.child = None
        self._warned = False  # the warning signal ahead of the timeout was sent (job "warn")
        self._stop_sent_at = None
        self._term_at = None  # a cancel with a warning: when its SIGTERM follows
        self.failure = None  # why the job failed, where its exit code does not say (a container never made)

    def note(self, text):
        self.log.write(("[flexorch] %s\n" % text).encode("utf-8"))

    def environment(self):
        env = base_environment(self.job, self.run_dir)
        env.update(self.secrets)
        env["FLEXORCH_RUN_DIR"] = self.run_dir
        env["FLEXORCH_JOB_ID"] = self.job.get("job_id", "")
        env["FLEXORCH_RUN_KEY"] = self.job.get("run_key", "")
        return env

    def _on_term(self, signum, frame):
        if self.stop_reason is None:
            self.stop_reason = "cancelled"

    def run_step(self, argv, deadline, env=None, cwd=None):
        """Run one process in its own group; stream its output through the masker."""
        if self.stop_reason:  # cancelled before it started: nothing to start
            return CANCEL_EXIT
        try:
            self.child = subprocess.Popen(
                argv,
                cwd=cwd or workdir_of(self.job, self.run_dir),
                env=env or self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                **OWN_GROUP,
            )
        except OSError as e:
            workdir = workdir_of(self.job, self.run_dir)
            if not os.path.isdir(workdir):
                self.note(
                    "workdir %s does not exist on %s: create it there, or fix workdir in the spec"
                    % (workdir, os.uname()[1])
                )
                return 1
            self.note("could not start %s: %s" % (argv[0], e.strerror or e))
            return 127
        write_atomic(os.path.join(self.run_dir, "job.pgid"), str(self.child.pid))
        fd = self.child.stdout.fileno()
        pending = b""
        self._stop_sent_at = None
        eof = False
        while True:
            self._enforce_stop(deadline)
            if eof:
                if self.child.poll() is not None:
                    break
                time.sleep(0.1)
                continue
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    eof = True
                    continue
                pending += chunk
                if b"\n" in pending:
                    lines, pending = pending.rsplit(b"\n", 1)
                    self.log.write(self.masker.mask_bytes(lines + b"\n"))
                elif len(pending) > 65536:
                    self.log.write(self.masker.mask_bytes(pending))
                    pending = b""
            elif self.child.poll() is not None:
                break  # done; a background process may still hold the pipe: it is stopped below
        if pending:
            self.log.write(self.masker.mask_bytes(pending) + b"\n")
        # background processes the step left behind die with it
        if not reaped_within(self.child.pid, 0):
            kill_group(self.child.pid, signal.SIGTERM)
            if not reaped_within(self.child.pid, 1.0):
                kill_group(self.child.pid, signal.SIGKILL)
                reaped_within(self.child.pid, 1.0)
        code = self.child.returncode
        return 128 - code if code < 0 else code

    def _warn(self, why):
        """The warning signal (job "warn") to every process of the job that handles it (its process group
        on the host; in a container, every process in it, through an exec of :func:`warn_script`)."""
        sig = self.job["warn"]["signal"]
        self._warned = True
        spec = self.job.get("container")
        if not spec:
            sent = warn_group(self.child.pid, getattr(signal, "SIG" + sig))
            self.note("SIG%s to the job's %d process(es) that handle it: %s (save what you need)" % (sig, sent, why))
            return
        from . import containers as ctr

        self.note("SIG%s to the processes in the container that handle it: %s (save what you need)" % (sig, why))
        argv = [spec["runtime_path"], *ctr.quiet(spec["runtime_path"]), "exec", ctr.container_name(self.job),
                "/bin/sh", "-c", warn_script(sig, int(getattr(signal, "SIG" + sig)))]  # fmt: skip
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=15)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as e:
            self.note("could not signal the container: %s" % e)

    def _enforce_stop(self, deadline):
        warn = self.job.get("warn")
        now = time.time()
        if warn and deadline is not None and not self._warned and now > deadline - float(warn["before"]):
            self._warn("its timeout comes in %ds" % max(0, int(deadline - now)))
        if self.stop_reason is None and deadline is not None and now > deadline:
            self.stop_reason = "timeout"
        if self.stop_reason and self._stop_sent_at is None:
            if warn and self.stop_reason == "cancelled" and self._term_at is None:
                if not self._warned:  # a cancel gives the same warning, and the same time, before its SIGTERM
                    self._warn("cancelled: SIGTERM in %ds" % int(float(warn["before"])))
                    self._term_at = now + float(warn["before"])
                else:
                    self._term_at = now
            if self._term_at is not None and now < self._term_at and self.child.poll() is None:
                return
            self.note("%s: stopping the job (SIGTERM to its process group)" % self.stop_reason)
            kill_group(self.child.pid, signal.SIGTERM)
            self._stop_sent_at = time.time()
        grace = float(self.job.get("kill_grace", 10))
        if self._stop_sent_at is not None and time.time() - self._stop_sent_at > grace:
            self.note("still running %ds after SIGTERM: SIGKILL" % int(grace))
            kill_group(self.child.pid, signal.SIGKILL)
            self._stop_sent_at = float("inf")

    def run_container(self, deadline):
        """The job as a container: create it (pulling the image as the policy says), then run
        ``start --attach`` as the supervised step; the container is removed however it ends."""
        from . import containers as ctr

        if self.stop_reason:  # cancelled before it started: no container to make
            ctr.forget_registry_login(self.run_dir)
            return CANCEL_EXIT
        spec = self.job["container"]
        workdir = workdir_of(self.job, self.run_dir)
        if not os.path.isdir(workdir):
            ctr.forget_registry_login(self.run_dir)
            self.note(
                "workdir %s does not exist on %s: create it there, or fix workdir in the spec"
                % (workdir, os.uname()[1])
            )
            return 1
        env = ctr.container_env(self.job, self.environment())
        # what steers the runtime (or its loader) never comes from the job: the runtime runs with this
        # runner's own values of those names; the job gets its values inside the image, from container.sh
        # (a secret is never written to a file: one named so is not passed at all; spec validation refuses it)
        held = {k for k in env if ctr.steers_runtime(k) and k not in BASE_ENV_KEYS}
        steering = {k: env[k] for k in held if k not in self.secrets}
        names = [k for k in env if k not in BASE_ENV_KEYS and k not in held]
        process_env = {k: v for k, v in env.items() if k not in held}  # the runtime reads ``-e NAME`` here
        for key in BASE_ENV_KEYS + RUNTIME_ENV_KEYS:
            process_env.pop(key, None)
            if key in os.environ:
                process_env[key] = os.environ[key]
        stored = [k for k in names if k in self.secrets] if ctr.uses_runtime_secrets(spec["runtime_path"]) else []
        ctr.wrapper(self.job, self.run_dir, steering, secret_files=stored)
        name = ctr.container_name(self.job)
        runtime = os.path.basename(spec["runtime_path"])
        self.note("container %s: %s, image %s (pull %s)" % (name, runtime, spec["image"], spec.get("pull")))
        try:
            ctr.create_secrets(spec["runtime_path"], self.job, {k: env[k] for k in stored}, process_env)
            for k in stored:  # from the secret store now: not in the runtime's environment
                process_env.pop(k, None)
            done = subprocess.run(
                ctr.create_argv(self.job, self.run_dir, workdir, names, secret_names=stored),
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=ctr.CREATE_TIMEOUT_S,
            )
        except (OSError, subprocess.SubprocessError) as e:
            done = None
            said = self.masker(str(e))
        else:
            said = self.masker((done.stdout or b"").decode("utf-8", "replace")).strip()
        finally:
            ctr.forget_registry_login(self.run_dir)  # the image is here (or will never be): the login goes
        if done is None or done.returncode != 0:
            last = (said.splitlines() or ["no output"])[-1][:500]
            self.note("%s create failed: %s" % (runtime, said[-2000:] or "no output"))
            self.failure = "%s could not create the container: %s" % (runtime, last)
            ctr.remove(self.job)
            return (done.returncode if done is not None else 0) or 125
        try:
            if self.stop_reason:
                return 1
            return self.run_step(
                [spec["runtime_path"], *ctr.quiet(spec["runtime_path"]), "start", "--attach", name],
                deadline,
                env=process_env,
                cwd=self.run_dir,
            )
        finally:
            if not ctr.remove(self.job):
                self.note("could not remove container %s" % name)

    def shell(self):
        for candidate in ("/bin/bash", "/usr/bin/bash", "/bin/sh"):
            if os.path.exists(candidate):
                return candidate
        return "sh"

    def join_group(self):
        """A held node of a multi-node group (:mod:`.gang`) waits for ``go`` and takes the group's contract
        into its environment; False when it ends without running (cancelled, or the group never started)."""
        from . import gang

        if not gang.held(self.run_dir):
            return True
        self.note("waiting until every node of the group has started")
        hold_s = float((self.job.get("gang") or {}).get("hold_s") or gang.HOLD_S)
        env, why = gang.wait_for_go(self.run_dir, lambda: self.stop_reason is not None, hold_s)
        if env is not None:
            self.job["env"] = dict(self.job.get("env") or {}, **env)
            self.note("node %s of %s: the group starts" % (env.get("FLEXORCH_NODE_RANK"), env.get("FLEXORCH_NNODES")))
            return True
        state, code, message = (
            ("failed", 1, why) if why else ("cancelled", CANCEL_EXIT, "cancelled before its group started")
        )
        if self.job.get("container"):  # a private image's login waits for a container that is never made
            from .containers import forget_registry_login

            forget_registry_login(self.run_dir)
        self.note("%s (%s)" % (state, message))
        self.log.close()
        write_atomic(
            os.path.join(self.run_dir, "result.json"),
            json.dumps({"state": state, "exit_code": code, "finished_at": time.time(), "message": message}),
        )
        return False

    def main(self):
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # a stop that came while the supervisor was starting (launch.py blocks it until here) arrives now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        become_subreaper()
        if not self.join_group():
            return
        started = time.time()
        timeout = self.job.get("timeout")
        deadline = started + float(timeout) if timeout else None
        code = 0
        setup = self.job.get("setup")
        if self.job.get("container"):
            code = self.run_container(deadline)
            setup = None
        elif setup:
            path = os.path.join(self.run_dir, "setup.sh")
            with open(path, "w") as f:
                f.write(keep_shell(self.job) + setup)
            self.note("setup")
            code = self.run_step([self.shell(), "-e", path], deadline)
            if code != 0 and not self.stop_reason:
                self.note("setup failed with exit code %d; run is skipped" % code)
        if code == 0 and not self.stop_reason and not self.job.get("container"):
            if self.job.get("argv"):
                argv = list(self.job["argv"])
            else:
                path = os.path.join(self.run_dir, "run.sh")
                with open(path, "w") as f:
                    f.write(keep_shell(self.job) + (self.job.get("script") or ""))
                argv = [self.shell(), path]
            code = self.run_step(argv, deadline)
        if self.stop_reason == "timeout":
            state, code = "timeout", TIMEOUT_EXIT
            message = "timed out after %ds" % int(float(timeout))
        elif self.stop_reason == "cancelled":
            state, code = "cancelled", CANCEL_EXIT
            message = "cancelled"
        else:
            state = "succeeded" if code == 0 else "failed"
            message = self.failure or "exit code %d" % code
        self.note("%s (%s)" % (state, message))
        self.log.close()
        write_atomic(
            os.path.join(self.run_dir, "result.json"),
            json.dumps(
                {
                    "state": state,
                    "exit_code": code,
                    "started_at": started,
                    "finished_at": time.time(),
                    "message": message,
                }
            ),
        )
