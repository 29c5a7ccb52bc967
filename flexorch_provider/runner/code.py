"""A job's code bundle on a host: received once per digest, checked, kept read-only, and given to
each run as its own tree of hard links.

A bundle is a tar of regular files (made by ``flexorch_provider.code``). Its digest is
:func:`digest_of` its manifest: every file's path, whether it is executable, and the SHA-256 of
its bytes, sorted by path; the same tree gives the same digest on any machine, whatever the tar's
own bytes. A host keeps it in ``~/.flexorch/code/<digest>/`` (files 0444, folders 0755): ``code-put``
writes it there only after the files it extracted give that digest, so a bundle on a host is
always what its name says.

A run gets ``RUN_DIR/code``: the same folders, its files hard links to the kept ones (a copy where
links cannot be made). The run may add, replace and delete files there; the kept files stay as
they were (they are read-only, and replacing a file replaces the link).
"""

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import time
import zlib

HOME_CODE_DIR = ".flexorch/code"  # under the account's home
CODE_ROOT = os.path.join("~", HOME_CODE_DIR)
DIGEST_CHARS = "0123456789abcdef"
MAX_BUNDLE_BYTES = 4 << 30  # what a host accepts at most, whatever the spec's cap said
BAD_GZIP = getattr(gzip, "BadGzipFile", OSError)  # Python 3.8+; an OSError before
KEEP_DAYS = 14  # a bundle no run used for this long is removed (at the next code-put)


class CodeError(Exception):
    """A bundle that cannot be used here; the message says why."""


def manifest_line(path, executable, sha256):
    return "%s %s %s\n" % ("x" if executable else "-", sha256, path)


def digest_of(entries):
    """The bundle digest of ``entries``: (path, executable, sha256 hex[, size]) of every file."""
    h = hashlib.sha256(b"flexorch-code-1\n")
    for path, executable, sha in sorted(e[:3] for e in entries):
        h.update(manifest_line(path, executable, sha).encode("utf-8"))
    return h.hexdigest()


def valid_digest(digest):
    return len(digest) == 64 and all(c in DIGEST_CHARS for c in digest)


def bundle_dir(digest):
    return os.path.join(os.path.expanduser(CODE_ROOT), digest)


def safe_name(name):
    """``name`` as a relative path inside the bundle, or None (absolute, ``..``, empty parts, NUL)."""
    if not name or name.startswith("/") or "\0" in name or "\\" in name:
        return None
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join(parts)


def has(digest):
    path = bundle_dir(digest)
    if os.path.isdir(path):
        os.utime(path, None)  # in use: kept by the sweep
        return True
    return False


def put(digest, stream):
    """Receive the bundle ``digest`` as a tar on ``stream``; keep it when its files give that digest."""
    if not valid_digest(digest):
        raise CodeError("not a bundle digest: %r" % digest[:80])
    final = bundle_dir(digest)
    if has(digest):
        return {"digest": digest, "present": True, "received": False}
    root = os.path.dirname(final)
    os.makedirs(root, 0o700, exist_ok=True)
    sweep(KEEP_DAYS)
    tmp = os.path.join(root, ".incoming-%s-%d" % (digest[:16], os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o755)
    try:
        entries, total = scan(stream, tmp)
        got = digest_of(entries)
        if got != digest:
            raise CodeError("the bundle's files give digest %s, not %s: it was changed on the way" % (got, digest))
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):  # another submit put it there first: same digest, same files
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"digest": digest, "present": True, "received": True, "files": len(entries), "bytes": total}


def scan(stream, into=None, limit=MAX_BUNDLE_BYTES):
    """Read a bundle's tar from ``stream``: [(path, executable, sha256, size)] and its bytes; its regular files
    written under ``into`` (read-only) when given. CodeError for anything but plain files inside it."""
    entries, total, seen = [], 0, set()
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
    except tarfile.TarError as e:
        raise CodeError("not a bundle (tar): %s" % e) from None
    try:
        with tar:
            for member in tar:
                name = safe_name(member.name)
                if name is None or not member.isreg():
                    raise CodeError("the bundle holds %r, which is not a plain file inside it" % member.name[:200])
                if name in seen:
                    raise CodeError("the bundle holds %s twice" % name)
                seen.add(name)
                total += member.size
                if total > limit:
                    raise CodeError("the bundle is larger than %d bytes" % limit)
                source = tar.extractfile(member)
                out = None
                if into is not None:
                    path = os.path.join(into, name)
                    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
                    out = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
                h = hashlib.sha256()
                try:
                    while True:
                        chunk = source.read(1 << 20)
                        if not chunk:
                            break
                        h.update(chunk)
                        if out is not None:
                            out.write(chunk)
                finally:
                    if out is not None:
                        out.close()
                executable = bool(member.mode & 0o100)
                if into is not None:
                    os.chmod(os.path.join(into, name), 0o555 if executable else 0o444)
                entries.append((name, executable, h.hexdigest(), member.size))
    except (tarfile.TarError, EOFError, zlib.error, BAD_GZIP) as e:
        raise CodeError("a broken bundle (tar): %s" % e) from None
    return entries, total


def checkout(digest, run_dir):
    """``RUN_DIR/code``: the kept bundle's folders, its files linked (copied where links fail)."""
    source = bundle_dir(digest)
    if not has(digest):
        raise CodeError(
            "the job's code (bundle %s) is not on %s: it is sent before the job starts; submit again"
            % (digest[:12], os.uname()[1])
        )
    target = os.path.join(run_dir, "code")
    for folder, _dirs, files in os.walk(source):
        rel = os.path.relpath(folder, source)
        here = target if rel == "." else os.path.join(target, rel)
        os.makedirs(here, 0o755, exist_ok=True)
        for name in files:
            try:
                os.link(os.path.join(folder, name), os.path.join(here, name))
            except OSError:
                shutil.copy2(os.path.join(folder, name), os.path.join(here, name))
    return target


def sweep(days):
    """Remove bundles no run used for ``days`` days; the digests removed."""
    root = os.path.expanduser(CODE_ROOT)
    cutoff = time.time() - float(days) * 86400
    gone = []
    try:
        names = os.listdir(root)
    except OSError:
        return gone
    for name in names:
        path = os.path.join(root, name)
        try:
            old = os.path.getmtime(path) < cutoff
        except OSError:
            continue
        if old and (valid_digest(name) or name.startswith(".incoming-")):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(name)
    return gone


def main_put(digest, stream):
    """``jobrunner code-put DIGEST``: the result as one JSON line; a refused bundle: (None, why)."""
    try:
        return json.dumps(put(digest, stream)), None
    except (CodeError, OSError) as e:
        return None, "code bundle %s refused: %s" % (digest[:12], e)
