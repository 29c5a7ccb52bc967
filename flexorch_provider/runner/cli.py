"""The runner's command line: ``jobrunner MODE ARGS...`` (modes in the package docstring).

Every mode prints JSON on stdout; what to run and its secrets come on stdin (``submit``),
never on the command line. Each mode imports only the modules it needs: ``status`` and
``log`` run on every poll, and python compiles a zipapp's modules on every start.
"""

import json
import sys

USAGE = (
    "usage: jobrunner submit|live KEY_DIR | start|status|cancel|health|claim RUN_DIR... | go RUN_DIR"
    " | code-has DIGEST... | code-put DIGEST | log RUN_DIR CURSOR"
    " | tail RUN_DIR COUNT | replicas SVC_DIR | retire KEY_DIR... | drain RUN_DIR... | metric SPEC RUN_DIR...\n"
)


def _print(rows):
    for row in rows:
        sys.stdout.write(json.dumps(row) + "\n")


def _submit(key_dir):
    from .attempts import prepare
    from .code import CodeError
    from .containers import NoRuntime
    from .gpus import GPU_REFUSAL_PREFIX, GPU_REFUSED_EXIT, GpuError
    from .launch import start

    payload = json.loads(sys.stdin.read())
    try:
        out = prepare(key_dir, payload["job"], payload.get("secrets") or {}, payload.get("registry"))
    except GpuError as e:
        sys.stderr.write("%s%s\n" % (GPU_REFUSAL_PREFIX, e))
        return GPU_REFUSED_EXIT
    except NoRuntime as e:
        sys.stderr.write("%s\n" % e)
        return GPU_REFUSED_EXIT
    except CodeError as e:
        sys.stderr.write("%s\n" % e)
        return 1
    except OSError as e:
        sys.stderr.write("cannot create the run directory under %s: %s\n" % (key_dir, e.strerror or e))
        return 1
    if not out["reattached"]:
        start(out["run_dir"])
    from .status import status

    out["status"] = status(out["run_dir"])  # the caller's first look, without another call
    _print([out])
    return 0


def main(argv):
    """Run one mode; the exit status (2: usage, 4: no GPUs for a submit)."""
    mode, args = (argv[0], argv[1:]) if argv else ("", [])
    if mode == "submit" and len(args) == 1:
        return _submit(args[0])
    if mode == "live" and len(args) == 1:
        from .attempts import found

        _print([found(args[0])])
    elif mode == "go" and len(args) == 1:
        from .gang import go
        from .status import status

        go(args[0], json.loads(sys.stdin.read())["env"])
        _print([status(args[0])])
    elif mode == "code-has" and args:
        from .code import has

        _print({"digest": d, "present": has(d)} for d in args)
    elif mode == "code-put" and len(args) == 1:
        from .code import main_put

        line, why = main_put(args[0], sys.stdin.buffer)
        if why:
            sys.stderr.write(why + "\n")
            return 1
        sys.stdout.write(line + "\n")
    elif mode == "claim" and args:
        from .attempts import claim

        _print(claim(run_dir) for run_dir in args)
    elif mode == "tail" and len(args) == 2:
        from .logs import tail_log

        lines, cursor = tail_log(args[0], int(args[1]))
        _print([{"lines": lines, "cursor": cursor}])
    elif mode == "log" and len(args) == 2:
        from .logs import read_log

        lines, cursor = read_log(args[0], int(args[1]))
        _print([{"lines": lines, "cursor": cursor}])
    elif mode == "start" and args:
        from .launch import start

        start(args[0])
    elif mode == "status" and args:
        from .status import status

        _print(status(run_dir) for run_dir in args)
    elif mode == "cancel" and args:
        from .procs import cancel

        _print([cancel(args[0])])
    elif mode == "replicas" and len(args) == 1:
        from .replicas import replicas

        _print(replicas(args[0]))
    elif mode == "health" and args:
        from .replicas import health

        _print(health(run_dir) for run_dir in args)
    elif mode == "drain" and args:
        from .replicas import drain

        _print(drain(run_dir) for run_dir in args)
    elif mode == "metric" and len(args) >= 2:
        from .metrics import metric

        _print(metric(args[0], args[1:]))
    elif mode == "retire" and args:
        from .replicas import retire

        _print(retire(key_dir) for key_dir in args)
    else:
        sys.stderr.write(USAGE)
        return 2
    return 0


def run():
    sys.exit(main(sys.argv[1:]))
