"""The runner ships as one zipapp: stable bytes, only the standard library, runnable with -S."""

from __future__ import annotations

import ast
import hashlib
import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from flexorch_provider.runner import bundle

PACKAGE_DIR = Path(bundle.__file__).parent


def test_the_zipapp_is_the_same_bytes_every_build_and_named_by_its_hash():
    first = bundle.pyz_bytes()
    bundle.pyz_bytes.cache_clear()
    assert bundle.pyz_bytes() == first
    assert bundle.file_name() == f"jobrunner-{hashlib.sha256(first).hexdigest()[:12]}.pyz"
    assert bundle.relative_path() == f".flexorch/bin/{bundle.file_name()}"
    zf = zipfile.ZipFile(io.BytesIO(first))
    names = zf.namelist()
    modules = sorted(p.name for p in PACKAGE_DIR.glob("*.py") if p.name != "bundle.py")
    assert names == ["__main__.py", *(f"flexorch_runner/{m}{c}" for m in modules for c in ("", "c"))]
    assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    for m in modules:
        assert zf.read(f"flexorch_runner/{m}") == (PACKAGE_DIR / m).read_bytes()


def test_runner_modules_import_only_each_other_and_the_standard_library():
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        if path.name == "bundle.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # relative: another runner module
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_runner_modules_parse_as_python_3_6():
    """Hosts may have only an old python3: the runner's grammar is checked against 3.6 here (no
    3.6 interpreter needed), and the zipapp runs below under this machine's pythons."""
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        if path.name != "bundle.py":
            ast.parse(path.read_text(), filename=str(path), feature_version=(3, 6))


@pytest.mark.parametrize("python", [sys.executable, "/usr/bin/python3"])
@pytest.mark.parametrize("how", ["boot", "zipapp"])
def test_the_zipapp_runs_with_dash_s(tmp_path, python, how):
    """As hosts run it (``python3 -S -c BOOT ZIPAPP``), and as a plain zipapp (``python3 -S ZIPAPP``)."""
    pyz = tmp_path / bundle.file_name()
    pyz.write_bytes(bundle.pyz_bytes())
    run = [python, *bundle.command(str(pyz))] if how == "boot" else [python, "-S", str(pyz)]
    key_dir = tmp_path / "key"
    done = subprocess.run([*run, "submit", str(key_dir)], input=b'{"job": {"script": "echo hi"}}',
                          capture_output=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b'"attempt": 1' in done.stdout and b'"state": "running"' in done.stdout
    for _ in range(200):
        out = subprocess.run([*run, "status", str(key_dir / "1")], capture_output=True, timeout=30)
        if b'"succeeded"' in out.stdout:
            break
        time.sleep(0.05)
    assert b'"succeeded"' in out.stdout, out
    log = subprocess.run([*run, "log", str(key_dir / "1"), "0"], capture_output=True, timeout=30)
    assert log.stdout.startswith(b'{"lines": ["hi", ')
    usage = subprocess.run(run, capture_output=True, timeout=30)
    assert usage.returncode == 2 and usage.stderr.startswith(b"usage: jobrunner submit")


def test_a_host_without_the_zipapp_says_so_with_exit_2(tmp_path):
    missing = tmp_path / "nowhere" / bundle.file_name()
    done = subprocess.run(["/usr/bin/python3", *bundle.command(str(missing)), "status", "x"], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2 and done.stderr == f"{bundle.MISSING}: {missing}\n"


def test_python_dash_m_runs_the_same_command_line():
    done = subprocess.run([sys.executable, "-m", "flexorch_provider.runner", "status", "/nonexistent/run"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0 and '"state": "lost"' in done.stdout


def test_the_local_copy_is_written_once_under_its_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = bundle.local_copy()
    assert path == str(tmp_path / ".flexorch" / "bin" / bundle.file_name())
    assert Path(path).read_bytes() == bundle.pyz_bytes()
    assert os.stat(path).st_mode & 0o777 == 0o600
    os.utime(path, (0, 0))
    assert bundle.local_copy() == path and os.stat(path).st_mtime == 0  # there: not written again
    assert [p.name for p in (tmp_path / ".flexorch" / "bin").iterdir()] == [bundle.file_name()]


def _imported_from(pyz: Path) -> str:
    code = f"import sys; sys.path.insert(0, {str(pyz)!r}); import flexorch_runner.cli as c; print(c.__file__)"
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_a_host_with_this_python_imports_the_bytecode_another_compiles_the_source(tmp_path):
    pyz = tmp_path / "runner.pyz"
    pyz.write_bytes(bundle.pyz_bytes())
    assert _imported_from(pyz).endswith("flexorch_runner/cli.pyc")
    # another Python's bytecode version: its magic number does not match, the source is used
    other = tmp_path / "other.pyz"
    with zipfile.ZipFile(pyz) as src, zipfile.ZipFile(other, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, b"\x00\x00" + data[2:] if info.filename.endswith(".pyc") else data)
    assert _imported_from(other).endswith("flexorch_runner/cli.py")
