"""One node of a multi-node job on an ssh fleet: held until every node has its GPUs, then started.

A job whose document carries ``"gang": {"nodes": N, "hold_s": S}`` is started in two rounds by the ssh target, so that nothing
runs before every node of the group has what it needs (all or none):

1. ``submit`` on each chosen host: the attempt is prepared as any other (GPUs claimed, files
   written) and its supervisor started, but *held*: ``RUN_DIR/hold`` exists, the supervisor waits
   and the status says pending. It answers with this host's ``gang`` facts: the address the ssh
   connection reached it on and a port free here now (rank 0's is the group's master port).
2. ``go`` on each host, with the group's contract for that node (its rank, every node's address,
   the master address and port) as JSON on stdin: written to ``RUN_DIR/go.json``; the supervisor
   adds it to the job's environment and starts the job.

A host that cannot take its node (no GPUs, unreachable) makes the target cancel the held ones:
a held supervisor that is cancelled ends without running anything and its GPU claims lapse. One
that never hears ``go`` (the worker died between the rounds) gives up after ``hold_s`` (default
:data:`HOLD_S`).
"""

import json
import os
import socket
import time

from .files import read_text, write_atomic

HOLD, GO, INFO = "hold", "go.json", "gang.json"
HOLD_S = 180  # a held node whose group never starts gives up after this long (its GPUs are free again)


def free_port():
    """A TCP port nothing listens on here now (the kernel's pick)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def own_address():
    """The address this host was reached on over ssh (sshd's ``SSH_CONNECTION``: client address and
    port, server address and port); None outside an ssh session."""
    parts = os.environ.get("SSH_CONNECTION", "").split()
    return parts[2] if len(parts) == 4 else None


def reserve(run_dir):
    """Hold the prepared attempt ``run_dir`` until :func:`go`; this host's facts for the group."""
    mine = {"addr": own_address(), "port": free_port()}
    with open(os.path.join(run_dir, HOLD), "w"):
        pass
    write_atomic(os.path.join(run_dir, INFO), json.dumps(mine))
    return dict(mine, held=True)


def facts(run_dir):
    """What :func:`reserve` answered for ``run_dir``, with ``held`` (no ``go`` yet); None for a job
    that is not a node of a group."""
    text = read_text(os.path.join(run_dir, INFO))
    if not text:
        return None
    out = json.loads(text)
    out["held"] = os.path.exists(os.path.join(run_dir, HOLD))
    return out


def held(run_dir):
    return os.path.exists(os.path.join(run_dir, HOLD))


def go(run_dir, env):
    """Start the held node with the group's contract ``env`` (a second ``go`` changes nothing)."""
    run_dir = os.path.abspath(run_dir)
    path = os.path.join(run_dir, GO)
    if os.path.isdir(run_dir) and not os.path.exists(path):
        write_atomic(path, json.dumps({"env": {str(k): str(v) for k, v in env.items()}}))
    try:
        os.unlink(os.path.join(run_dir, HOLD))
    except OSError:
        pass


def wait_for_go(run_dir, stopped, hold_s=HOLD_S):
    """In the supervisor of a held node: ``(env, None)`` once ``go`` came with the contract's ``env``;
    ``(None, None)`` when ``stopped()`` (a cancel) first; ``(None, why)`` after ``hold_s``."""
    deadline = time.time() + hold_s
    path = os.path.join(run_dir, GO)
    while True:
        text = read_text(path)
        if text:
            try:
                os.unlink(os.path.join(run_dir, HOLD))
            except OSError:
                pass
            return json.loads(text)["env"], None
        if stopped():
            return None, None
        if time.time() > deadline:
            return None, (
                "the other nodes of this job's group did not all start within %gs: nothing ran here "
                "(its GPUs are free again)" % hold_s
            )
        time.sleep(0.1)
