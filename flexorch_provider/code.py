"""A job's code (``code:`` in the spec): the files of a folder, packed into one content-addressed
bundle that every target receives once (:mod:`flexorch_provider.runner.code` keeps it there).

Which files: every regular file under the folder, less what its ``.gitignore`` files (at any
depth, with git's pattern rules), ``code.exclude`` and :data:`ALWAYS_EXCLUDED` leave out. A
symbolic link to a file inside the folder is packed as that file; other links are left out
(and listed). The bundle is refused, before anything is submitted, when its files add up to
more than ``code.max_size``: the error names the largest files.

Its digest (:func:`flexorch_provider.runner.code.digest_of`) covers each file's path, executable
bit and bytes, nothing else: the same tree gives the same digest on a laptop and on any worker.
The tar is deterministic too (sorted, fixed owner, time and modes).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pathspec

from flexorch_provider.exceptions import ConfigurationError, SpecError, SpecProblem
from flexorch_provider.runner.code import CodeError, digest_of, scan
from flexorch_provider.spec.code import MAX_MAX_SIZE

ALWAYS_EXCLUDED = (".git/", "__pycache__/", "*.pyc", ".ipynb_checkpoints/", ".DS_Store")
FIXED_MTIME = 946684800  # 2000-01-01: the same tar bytes for the same tree


@dataclass(frozen=True)
class GitSource:
    url: str
    commit: str  # the ref as it resolved when the task ran: every node and retry runs this one
    path: str  # the folder in the repository
    user: str | None = None
    token: str | None = field(default=None, repr=False)  # from code.connection: never logged or sent but to git


@dataclass(frozen=True)
class CodeFile:
    path: str  # relative, with "/"
    size: int
    executable: bool
    sha256: str
    source: Path | None = field(default=None, repr=False)  # None: in an uploaded bundle's tar


@dataclass
class Bundle:
    """A packed code folder: its digest, its files, and (made on first use) its tar bytes."""

    root: Path
    files: list[CodeFile]
    skipped: list[str] = field(default_factory=list)  # links that lead outside the folder, special files
    _tar: bytes | None = field(default=None, repr=False)
    git: GitSource | None = None  # code from a repository: where from (the kubernetes target fetches it itself)

    @property
    def digest(self) -> str:
        return digest_of([(f.path, f.executable, f.sha256) for f in self.files])

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_tarball(cls, data: bytes, digest: str) -> Bundle:
        """An uploaded bundle (a gzip'd tar), checked: plain files inside it only, and its files give
        ``digest``; CodeError otherwise."""
        entries, _ = scan(io.BytesIO(data), limit=MAX_MAX_SIZE)
        files = sorted((CodeFile(path, size, executable, sha) for path, executable, sha, size in entries),
                       key=lambda f: f.path)  # fmt: skip
        bundle = cls(Path("<uploaded>"), files, _tar=data)
        if bundle.digest != digest:
            raise CodeError(f"the bundle's files give digest {bundle.digest}, not {digest}: it was changed on the way")
        return bundle

    def tarball(self) -> bytes:
        """The bundle as a gzip'd tar, the same bytes for the same tree."""
        if self._tar is None:
            out = io.BytesIO()
            with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6) as tar:
                for f in self.files:
                    info = tarfile.TarInfo(f.path)
                    info.size, info.mtime = f.size, FIXED_MTIME
                    info.mode = 0o755 if f.executable else 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    assert f.source is not None  # a bundle read from a tar keeps that tar
                    with f.source.open("rb") as data:
                        tar.addfile(info, data)
            self._tar = _fixed_gzip_header(out.getvalue())
        return self._tar

    def summary(self) -> str:
        origin = f" from {self.git.url} at {self.git.commit[:12]}" if self.git else ""
        return f"code {self.digest[:12]}: {len(self.files)} files, {human(self.size)}{origin}"


def _fixed_gzip_header(data: bytes) -> bytes:
    """gzip writes the time into its header: zero it (bytes 4..7) so equal trees give equal bytes."""
    return data[:4] + b"\0\0\0\0" + data[8:] if data[:2] == b"\x1f\x8b" else data


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _ignore_spec(lines: list[str]) -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines(lines)


def collect(root: Path, exclude: list[str], max_bytes: int, *, where: str = "code") -> Bundle:
    """The files of ``root`` that a job's code bundle holds (see the module docstring)."""
    root = root.resolve()
    if not root.is_dir():
        raise SpecError(SpecProblem(where, None, "code.path", f"{root} is not a folder"))
    # (base folder relative to root, its rules); later entries (deeper folders, then the spec's excludes) win
    rules: list[tuple[str, pathspec.PathSpec]] = [("", _ignore_spec(list(ALWAYS_EXCLUDED)))]
    spec_rules = ("", _ignore_spec(list(exclude)))

    def ignored(rel: str, is_dir: bool) -> bool:
        verdict = False
        for base, spec in [*rules, spec_rules]:
            if base and not (rel + "/").startswith(base + "/"):
                continue
            sub = rel[len(base) + 1 :] if base else rel
            result = spec.check_file(sub + "/" if is_dir else sub)
            if result.include is not None:
                verdict = result.include
        return verdict

    found: list[tuple[str, int, bool, Path]] = []  # path, size, executable, where
    skipped: list[str] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        rel_dir = here.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        # the rules of the folders above this one (os.walk goes depth first: not a sibling's), then its own
        rules[:] = [r for r in rules if not r[0] or (rel_dir + "/").startswith(r[0] + "/")]
        gitignore = here / ".gitignore"
        if gitignore.is_file():
            lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
            rules.append((rel_dir, _ignore_spec(lines)))
        keep_dirs = []
        for d in sorted(dirs):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if (here / d).is_symlink():
                if not ignored(rel, True):
                    skipped.append(f"{rel}/ (a link to a folder)")
                continue
            if not ignored(rel, True):
                keep_dirs.append(d)
        dirs[:] = keep_dirs
        for name in sorted(names):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if ignored(rel, False):
                continue
            path = here / name
            if path.is_symlink():
                target = path.resolve()
                if not target.is_file() or not target.is_relative_to(root):
                    skipped.append(f"{rel} (a link outside the folder)")
                    continue
            elif not path.is_file():
                skipped.append(f"{rel} (not a regular file)")
                continue
            st = path.stat()
            found.append((rel, st.st_size, bool(st.st_mode & 0o100), path))
    total = sum(size for _, size, _, _ in found)
    if total > max_bytes:
        largest = sorted(found, key=lambda f: -f[1])[:5]
        raise SpecError(
            SpecProblem(
                where,
                None,
                "code",
                f"{root} holds {human(total)} to send, over code.max_size ({human(max_bytes)}); the largest: "
                + ", ".join(f"{rel} ({human(size)})" for rel, size, _, _ in largest)
                + ": add them to code.exclude or .gitignore, or raise code.max_size",
            )
        )
    files = [CodeFile(rel, size, executable, _sha256(path), path) for rel, size, executable, path in found]
    return Bundle(root, sorted(files, key=lambda f: f.path), skipped)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


GIT_TIMEOUT_S = 300
# git asks for credentials through this helper, which reads them from the environment: no token is
# ever a word of a command line (a process list shows those)
CREDENTIAL_HELPER = '!f() { echo "username=$FLEXORCH_GIT_USER"; echo "password=$FLEXORCH_GIT_TOKEN"; }; f'


def git_credentials(connection: str | None) -> tuple[str | None, str | None]:
    """(user, token) of ``code.connection`` (its login, default x-access-token; its password)."""
    if connection is None:
        return None, None
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(connection)
    except Exception as e:
        raise ConfigurationError(f"code.connection {connection!r} cannot be read here ({e}): create it") from None
    if not conn.password:
        raise ConfigurationError(f"code.connection {connection!r} has no password (the repository's token)")
    return conn.login or "x-access-token", conn.password


def git_env(user: str | None, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SSL_CERT_FILE", "SSL_CERT_DIR")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", SSH_ASKPASS="true")
    if token:
        env.update(FLEXORCH_GIT_USER=user or "x-access-token", FLEXORCH_GIT_TOKEN=token)
    return env


def fetch_git(url: str, ref: str | None, into: Path, connection: str | None = None) -> GitSource:
    """A shallow fetch of ``ref`` (default HEAD) of ``url`` into ``into``, checked out; what came."""
    user, token = git_credentials(connection)
    env = git_env(user, token)
    helper = ["-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}"] if token else []

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *helper, *args], cwd=into, env=env, capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S)  # fmt: skip
        except FileNotFoundError:
            raise ConfigurationError("code.git needs git on the Airflow worker: install it there") from None
        except subprocess.TimeoutExpired:
            raise ConfigurationError(f"fetching {url} took longer than {GIT_TIMEOUT_S}s") from None
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).replace(token or "\0", "***")
            raise ConfigurationError(f"cannot fetch {ref or 'HEAD'} of {url}: {said[-500:]}")
        return done.stdout.strip()

    into.mkdir(parents=True, exist_ok=True)
    git("init", "-q")
    git("fetch", "-q", "--depth", "1", "--no-tags", "--", url, ref or "HEAD")
    git("checkout", "-q", "--detach", "FETCH_HEAD")
    return GitSource(url, git("rev-parse", "HEAD"), ".", user, token)


def bundle_for(workload: Any, code_root: str | Path | None) -> Bundle | None:
    """The code of ``workload``: its ``code:`` folder relative to ``code_root`` (the spec file's folder)
    as it is now, or the folder of its ``code.git`` repository as it is at ``code.ref``; None for a
    workload without code."""
    code = workload.code
    if code is None:
        return None
    if code.git is not None:
        with tempfile.TemporaryDirectory(prefix="flexorch-git-") as tmp:
            source = fetch_git(code.git, code.ref, Path(tmp), code.connection)
            root = (Path(tmp) / code.path).resolve()
            if not root.is_relative_to(Path(tmp).resolve()) or not root.is_dir():
                raise ConfigurationError(
                    f"code.path {code.path!r} is not a folder of {code.git} at {code.ref or 'HEAD'}"
                )
            bundle = collect(root, code.exclude, code.max_size, where=f"{code.git}@{source.commit[:12]}")
            bundle.tarball()  # the files go with the folder
            bundle.git = replace(source, path=code.path)
            return bundle
    if code_root is None:
        raise ConfigurationError(
            f"{workload.name} has code: {code.path!r}, relative to its spec file's folder, but the spec was given "
            "as a dict or model: pass code_root=<that folder> to the operator"
        )
    base = Path(code_root).resolve()
    root = (base / code.path).resolve()
    if not root.is_relative_to(base):  # a link that leads out of the spec's folder
        raise ConfigurationError(f"code.path {code.path!r} leads out of {base} (through a link); it must stay inside")
    return collect(root, code.exclude, code.max_size, where=str(root))
