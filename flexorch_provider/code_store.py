"""Where uploaded code bundles wait for the worker that runs their job (``flexorch submit`` sends
them through the api-server): a folder of Airflow's object storage that every Airflow machine
reads, one ``<digest>.tar.gz`` per bundle.

``FLEXORCH_CODE_STORE`` names it as an ``ObjectStoragePath`` URL (``s3://bucket/flexorch-code``,
``gs://...``, ``file:///mnt/shared/flexorch-code``), with ``FLEXORCH_CODE_STORE_CONN`` the Airflow
connection for its credentials. Unset: ``file://$FLEXORCH_STATE_DIR/code``, which only every machine
sees when all Airflow components run on one machine or that folder is on shared storage
(``FLEXORCH_STATE_SHARED=1``); with a distributed executor and neither, using it is refused.

A bundle is checked on the way in (plain files inside it, its files give its digest) and again on
the way out: what a worker reads is what was uploaded, or an error.
"""

from __future__ import annotations

import os
from typing import IO, Any

from flexorch_provider.code import Bundle
from flexorch_provider.exceptions import ConfigurationError
from flexorch_provider.runner.code import CodeError, valid_digest

STORE_ENV = "FLEXORCH_CODE_STORE"
STORE_CONN_ENV = "FLEXORCH_CODE_STORE_CONN"
MAX_UPLOAD_BYTES = 2 * 2**30  # gzip'd; the spec's code.max_size (at most 2Gi of files) is checked on the laptop


def location() -> Any:
    """The store's folder as an ``ObjectStoragePath``."""
    from airflow.sdk import ObjectStoragePath

    url = os.environ.get(STORE_ENV, "").strip()
    if not url:
        from flexorch_provider.paths import state_dir
        from flexorch_provider.store import SHARED_ENV, _flag, distributed_executors

        far = distributed_executors()
        if far and not _flag(SHARED_ENV):
            raise ConfigurationError(
                f"uploaded code is kept in {state_dir() / 'code'} on this machine's disk, but Airflow runs tasks with "
                f"{', '.join(far)}, on several machines: set {STORE_ENV} to a folder of object storage every machine "
                f"reads (s3://..., gs://..., or file:///<a shared mount>) and {STORE_CONN_ENV} to its connection"
            )
        url = (state_dir() / "code").as_uri()
    conn_id = os.environ.get(STORE_CONN_ENV, "").strip() or None
    return ObjectStoragePath(url, conn_id=conn_id)


def _object(digest: str) -> Any:
    if not valid_digest(digest):
        raise CodeError(f"not a bundle digest: {digest[:80]!r}")
    return location() / f"{digest}.tar.gz"


def has(digest: str) -> bool:
    return bool(_object(digest).exists())


def put(digest: str, data: IO[bytes]) -> dict[str, Any]:
    """Keep the bundle read from ``data`` (a gzip'd tar) as ``digest``, once its files give that digest."""
    target = _object(digest)
    raw = data.read(MAX_UPLOAD_BYTES + 1)
    if len(raw) > MAX_UPLOAD_BYTES:
        raise CodeError(f"the upload is larger than {MAX_UPLOAD_BYTES} bytes")
    bundle = Bundle.from_tarball(raw, digest)
    if target.exists():
        return {"digest": digest, "stored": False, "files": len(bundle.files), "bytes": len(raw)}
    location().mkdir(parents=True, exist_ok=True)
    partial = location() / f".{digest}.{os.getpid()}.partial"
    partial.write_bytes(raw)
    partial.rename(target)
    return {"digest": digest, "stored": True, "files": len(bundle.files), "bytes": len(raw)}


def get(digest: str) -> Bundle:
    """The uploaded bundle ``digest``, checked; ConfigurationError when the store lacks it."""
    target = _object(digest)
    if not target.exists():
        raise ConfigurationError(
            f"the code of this submission (bundle {digest[:12]}) is not in the code store {location()}: it was "
            f"uploaded to another store, or removed; submit again"
        )
    return Bundle.from_tarball(target.read_bytes(), digest)
