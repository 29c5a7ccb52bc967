"""Start a supervisor detached from whoever asked (double fork + setsid), and return once it is up.

Kept apart from :mod:`.supervisor` so that ``submit`` imports only what it needs: the
supervisor's own modules (subprocess, select, the masker) are imported by the detached
process after it has said it is running.
"""

import json
import os
import select
import time

from .files import runner_identity, write_atomic

UP_WAIT_S = 5.0  # how long start() waits for the detached supervisor to write runner.pid


def start(run_dir):
    """Detach a supervisor for ``run_dir``; return once it has written ``runner.pid`` (so the
    caller's first status says running), or after :data:`UP_WAIT_S` (status then says pending
    until it does, or lost after the launch grace)."""
    run_dir = os.path.abspath(run_dir)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(ready_w)
        os.waitpid(pid, 0)  # the middle process exits as soon as it has forked
        select.select([ready_r], [], [], UP_WAIT_S)  # EOF: the supervisor wrote runner.pid
        os.close(ready_r)
        return
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        import signal

        # once runner.pid exists a cancel may come; until the supervisor's handlers are in place it is
        # held (pending, not lost, and not killing a supervisor that has said it runs)
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
        write_atomic(os.path.join(run_dir, "runner.pid"), runner_identity())
        os.close(ready_w)
        from .supervisor import Supervisor

        Supervisor(run_dir).main()
    except BaseException as e:  # record why, then exit; nobody is watching stderr
        try:
            with open(os.path.join(run_dir, "log"), "ab") as f:
                f.write(("[flexorch] supervisor error: %r\n" % (e,)).encode())
            write_atomic(
                os.path.join(run_dir, "result.json"),
                json.dumps(
                    {
                        "state": "failed",
                        "exit_code": 1,
                        "finished_at": time.time(),
                        "message": "supervisor error: %r" % (e,),
                    }
                ),
            )
        finally:
            os._exit(1)
    os._exit(0)
