"""The code store (flexorch_provider/code_store.py): uploads kept by digest in Airflow's object
storage, checked on the way in and out, and never silently on one machine's disk under Celery."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from flexorch_provider import code_store
from flexorch_provider.code import collect
from flexorch_provider.exceptions import ConfigurationError
from flexorch_provider.runner.code import CodeError


def bundle(root: Path, text: str):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(text)
    return collect(root, [], 2**20)


def test_a_bundle_is_kept_once_and_read_back_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(code_store.STORE_ENV, (tmp_path / "store").as_uri())
    b = bundle(tmp_path / "a", "print(1)\n")
    assert not code_store.has(b.digest)
    assert code_store.put(b.digest, io.BytesIO(b.tarball()))["stored"] is True
    assert code_store.put(b.digest, io.BytesIO(b.tarball()))["stored"] is False
    back = code_store.get(b.digest)
    assert back.digest == b.digest and back.tarball() == b.tarball() and [f.path for f in back.files] == ["train.py"]
    # what was stored changed behind our back (another writer, a broken disk): an error, not other code
    other = bundle(tmp_path / "b", "print(2)\n")
    (tmp_path / "store" / f"{b.digest}.tar.gz").write_bytes(other.tarball())
    with pytest.raises(CodeError, match="it was changed on the way"):
        code_store.get(b.digest)
    with pytest.raises(ConfigurationError, match="is not in the code store"):
        code_store.get(other.digest)
    with pytest.raises(CodeError, match="not a bundle digest"):
        code_store.has("../../etc/passwd")


def test_the_default_folder_is_refused_with_a_distributed_executor(tmp_path, monkeypatch):
    monkeypatch.delenv(code_store.STORE_ENV, raising=False)
    monkeypatch.setenv("FLEXORCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.delenv("FLEXORCH_STATE_SHARED", raising=False)
    with pytest.raises(ConfigurationError, match="set FLEXORCH_CODE_STORE to a folder of object storage every machine"):
        code_store.location()
    monkeypatch.setenv("FLEXORCH_STATE_SHARED", "1")
    assert str(code_store.location()).endswith("/state/code")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.delenv("FLEXORCH_STATE_SHARED")
    assert str(code_store.location()).endswith("/state/code")
