"""The runner as one file: a zipapp of this package, built on the worker (this module is not shipped).

:func:`pyz_bytes` zips every other module of this package under ``flexorch_runner/`` (the
modules import each other relatively, so they work under that name) and adds a
``__main__.py`` that runs :func:`.cli.main`; ``python3 -S jobrunner-<hash>.pyz MODE ...``
runs it (``-S``: no site-packages, the runner needs only the standard library; zip imports
are built into every python3). Beside each module it stores the module's bytecode for the worker's own
Python (hosts with the same python3 version skip compiling; others compile the source). The bytes
are deterministic: files stored uncompressed (no zlib version in them), in name order, dated
1980-01-01, mode 0644, so the same sources and Python version give the same file and the same
hash on every worker.

The file is named by its content, ``jobrunner-<first 12 hex digits of its sha256>.pyz``, in
``~/.flexorch/bin/`` of a host (the ssh target copies it when that name is missing) and of the
worker (the local target, :func:`local_copy`): a new runner version gets a new name, the same
version is never copied twice.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

PACKAGE = "flexorch_runner"  # the package's name inside the zipapp
NOT_SHIPPED = ("bundle.py",)
RUNNER_DIR = ".flexorch/bin"  # relative to a home directory, on hosts and on the worker
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can carry
MAIN = f"import sys\n\nfrom {PACKAGE}.cli import main\n\nsys.exit(main(sys.argv[1:]))\n"


def sources() -> list[tuple[str, bytes]]:
    """(name in the zip, bytes) of every shipped file, in the order they are stored."""
    here = Path(__file__).parent
    files = [(f"{PACKAGE}/{p.name}", p.read_bytes()) for p in sorted(here.glob("*.py")) if p.name not in NOT_SHIPPED]
    return [("__main__.py", MAIN.encode()), *files]


# Compiles each module (JSON on stdin: [[name, source], ...]) and writes the .pyc bytes, as
# JSON of hex strings. A fresh interpreter: marshal marks an object as shared by its reference
# count, so the same code marshalled in a long-lived process can come out different bytes.
_COMPILE = """
import importlib.util, json, marshal, sys
out = []
for name, source in json.load(sys.stdin):
    data = source.encode()
    code = compile(data, name, "exec", dont_inherit=True)
    head = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + importlib.util.source_hash(data)
    out.append((head + marshal.dumps(code)).hex())
json.dump(out, sys.stdout)
"""


def _bytecode(modules: list[tuple[str, bytes]]) -> list[bytes] | None:
    """Each module compiled by this Python as an unchecked hash-based .pyc (flags 0b01: never checked
    against the source; both come from this one file). A host whose python3 has the same bytecode
    version imports them without compiling (compiling was a third of every runner call); any other
    python3 rejects their magic number and compiles the .py beside them. None if this Python cannot
    be started again (the zipapp then carries sources only)."""
    payload = json.dumps([(name, data.decode()) for name, data in modules])
    try:
        done = subprocess.run(
            [sys.executable, "-S", "-I", "-c", _COMPILE],
            input=payload,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return [bytes.fromhex(h) for h in json.loads(done.stdout)]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _entries() -> list[tuple[str, bytes]]:
    files = sources()
    modules = [(name, data) for name, data in files if name.startswith(f"{PACKAGE}/")]
    compiled = dict(zip((name for name, _ in modules), _bytecode(modules) or [], strict=False))
    out = []
    for name, data in files:
        out.append((name, data))
        if name in compiled:
            out.append((name[:-3] + ".pyc", compiled[name]))
    return out


# How hosts start the runner: ``python3 -S -c BOOT ZIPAPP MODE ARGS...``. Importing from the zipapp
# on sys.path skips what ``python3 ZIPAPP`` costs on every call (runpy, importlib.util and their
# imports: a quarter of a status poll's time). A missing zipapp exits 2 saying so, as python3
# itself would, so the caller installs it and tries again. Python 3.6-compatible.
MISSING = "the flexorch runner is not installed"
BOOT = (
    "import os,sys;p=sys.argv.pop(1)\n"
    f'if not os.path.isfile(p):sys.stderr.write("{MISSING}: "+p+chr(10));sys.exit(2)\n'
    f"sys.path.insert(0,p);from {PACKAGE}.cli import run;run()"
)


def command(path: str) -> list[str]:
    """The interpreter arguments that run the zipapp at ``path`` (after the python3 to use)."""
    return ["-S", "-c", BOOT, path]


@functools.cache
def pyz_bytes() -> bytes:
    """The zipapp (built once per process)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in _entries():
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.create_system = 3  # unix, so the mode below is read as one
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buffer.getvalue()


@functools.cache
def digest() -> str:
    """sha256 of the zipapp, in hex (once per process: every runner command names the file)."""
    return hashlib.sha256(pyz_bytes()).hexdigest()


def file_name() -> str:
    return f"jobrunner-{digest()[:12]}.pyz"


def relative_path() -> str:
    """Where the zipapp lives, relative to a home directory: ``.flexorch/bin/jobrunner-<hash>.pyz``."""
    return f"{RUNNER_DIR}/{file_name()}"


def local_path() -> str:
    """The zipapp's path on this machine (it may not be written yet: see :func:`local_copy`)."""
    return os.path.join(os.path.expanduser("~"), relative_path())


def local_copy() -> str:
    """:func:`local_path`, written first when it is missing (0600, a temp name, then rename)."""
    path = local_path()
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pyz_bytes())
        os.replace(tmp, path)
    return path
