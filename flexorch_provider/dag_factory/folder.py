"""The drop-in loader: every spec in a folder → its DAGs, one bad spec hiding nothing.

``dags/flexorch_dags.py`` calls :func:`load_folder`. Per spec file:

- a valid spec → the DAGs of its plan (see ``plan.py``);
- an invalid spec (or a DAG id already taken) → a placeholder DAG that shows the problem
  with file, line and field, and fails with it if run (see ``build.py``). Every other spec
  still loads.

Airflow re-parses the loader file every ``min_file_process_interval`` seconds in a fresh
process, so validated specs are kept in a small on-disk cache keyed by the file's content
hash: an unchanged spec is neither re-parsed nor re-validated, only its DAG is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydantic

from flexorch_provider import __version__
from flexorch_provider.dag_factory.build import build_dag, build_invalid_dag, invalid_dag_id, problems_of
from flexorch_provider.dag_factory.plan import plan_dags
from flexorch_provider.dag_factory.submit import build_submit_dags
from flexorch_provider.exceptions import SpecError, SpecProblem
from flexorch_provider.policy import load_policy, policy_file, policy_problems
from flexorch_provider.spec.loader import iter_spec_files, load_spec_bytes
from flexorch_provider.spec.models import SpecModel
from flexorch_provider.submission import is_submit_dag

log = logging.getLogger(__name__)

SPECS_DIR_ENV = "FLEXORCH_SPECS_DIR"
SUBMIT_ENV = "FLEXORCH_SUBMIT_DAG"  # 0: no flexorch-submit DAG
CACHE_DIR_ENV = "FLEXORCH_CACHE_DIR"
_CACHE_FORMAT = f"flexorch {__version__} pydantic {pydantic.VERSION} 2"


@dataclass(frozen=True)
class Entry:
    """What one spec file gave: a spec, or the problems (and its name, when readable)."""

    digest: bytes
    spec: SpecModel | None
    problems: tuple[SpecProblem, ...] = ()
    name: str | None = None
    text: str | None = None
    first_seen: float = 0.0  # when this file was first loaded: of two specs with one name, the older keeps it


def specs_dir_for(anchor: str | Path | None = None) -> Path:
    """``$FLEXORCH_SPECS_DIR`` if set (relative to the anchor's folder), else ``specs/`` beside the anchor."""
    base = Path(anchor).resolve().parent if anchor else Path.cwd()
    configured = os.environ.get(SPECS_DIR_ENV)
    if configured:
        return (base / configured).resolve()
    return base / "specs"


def _cache_path(specs_dir: Path) -> Path:
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flexorch"
    )
    key = hashlib.sha256(str(specs_dir.resolve()).encode()).hexdigest()[:16]
    return Path(root) / f"specs-{key}.pickle"


def _read_cache(path: Path) -> dict[str, Entry]:
    try:
        st = path.stat()
        # only trust a cache this user wrote and nobody else can change
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return {}
        with path.open("rb") as f:
            data = pickle.load(f)
        if data.get("format") == _CACHE_FORMAT:
            return dict(data["entries"])
    except FileNotFoundError:
        pass
    except Exception as e:  # a corrupt or foreign cache is only a slower parse
        log.warning("flexorch: ignoring spec cache %s (%s)", path, e)
    return {}


def _write_cache(path: Path, entries: dict[str, Entry]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".specs-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump({"format": _CACHE_FORMAT, "entries": entries}, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("flexorch: cannot write the spec cache %s (%s); parsing stays correct, only slower", path, e)


def _name_guess(raw: bytes) -> str | None:
    """The spec's ``name`` from an invalid file, so its placeholder keeps the DAG id: from the YAML
    where it parses, else from a plain top-level ``name: x`` line (a spec refused for an alias
    bomb or a control character elsewhere still has one)."""
    import re

    from flexorch_provider.spec.fields import DNS_LABEL_RE
    from flexorch_provider.spec.loader import parse_yaml

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        data, _ = parse_yaml(text)
    except Exception:
        line = re.search(r"^name:[ \t]*([a-z0-9-]+)[ \t]*(?:#.*)?$", text, re.M)
        data = {"name": line.group(1)} if line else None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and len(name) <= 63 and DNS_LABEL_RE.match(name) else None


def _load_entry(raw: bytes, digest: bytes, shown: str) -> Entry:
    try:
        spec = load_spec_bytes(raw, shown)
        return Entry(digest, spec, text=raw.decode("utf-8"))
    except SpecError as e:
        return Entry(digest, None, tuple(e.problems), _name_guess(raw))
    except Exception as e:  # never let one file take the others down
        return Entry(digest, None, tuple(problems_of(e, shown)))


def load_entries(specs_dir: Path) -> tuple[dict[str, Entry], dict[str, int]]:
    """Every spec file under ``specs_dir`` → its entry (cached by content hash)."""
    cache_path = _cache_path(specs_dir)
    cached = _read_cache(cache_path)
    entries: dict[str, Entry] = {}
    stats = {"cached": 0, "parsed": 0}
    label = specs_dir.name
    now = time.time()
    for path in iter_spec_files([specs_dir]):
        rel = path.relative_to(specs_dir).as_posix()
        shown = f"{label}/{rel}"
        try:
            raw = path.read_bytes()
        except OSError as e:
            problem = SpecProblem(shown, None, "", f"cannot read the file: {e.strerror or e}")
            entries[rel] = Entry(b"", None, (problem,), first_seen=cached[rel].first_seen if rel in cached else now)
            continue
        digest = hashlib.sha256(raw).digest()
        hit = cached.get(rel)
        if hit is not None and hit.digest == digest:
            entries[rel] = hit
            stats["cached"] += 1
            continue
        # an edited file keeps when it was first seen: it still owns its name
        entries[rel] = replace(_load_entry(raw, digest, shown), first_seen=hit.first_seen if hit else now)
        stats["parsed"] += 1
    if stats["parsed"] or set(cached) != set(entries):
        _write_cache(cache_path, {k: v for k, v in entries.items() if v.digest})
    return entries, stats


def load_folder(anchor: str | Path | None = None, *, specs_dir: str | Path | None = None) -> dict[str, Any]:
    """Build every DAG of a specs folder: ``{dag_id: DAG}``.

    :param anchor: the loader file (``__file__``); ``specs/`` beside it is the default folder.
    :param specs_dir: the folder, overriding ``$FLEXORCH_SPECS_DIR`` and the default.
    """
    started = time.perf_counter()
    folder = Path(specs_dir) if specs_dir is not None else specs_dir_for(anchor)
    if not folder.is_dir():
        log.warning(
            "flexorch: no specs folder at %s; create it and drop spec files in, or set %s", folder, SPECS_DIR_ENV
        )
        return {}
    entries, stats = load_entries(folder)
    dags: dict[str, Any] = {}
    owners: dict[str, str] = {}
    invalid = 0
    label = folder.name

    def placeholder(rel: str, dag_id: str, problems: list[SpecProblem]) -> None:
        nonlocal invalid
        invalid += 1
        if dag_id in dags:
            dag_id = invalid_dag_id(None, rel)
        log.error(
            "flexorch: %s is invalid; its DAG %s shows the problems:\n%s",
            rel,
            dag_id,
            "\n".join(str(p) for p in problems),
        )
        dags[dag_id] = build_invalid_dag(dag_id, f"{label}/{rel}", problems)
        owners[dag_id] = rel

    policy_path = policy_file(folder)
    try:
        policy = load_policy(policy_path)
    except SpecError as e:  # an invalid policy never means "allow all": submissions are refused, this DAG says why
        policy = None
        placeholder(policy_path.name if policy_path else "policy", "flexorch-invalid-policy", list(e.problems))
    # the file that had a name first keeps it: a new file with a taken name cannot take its DAG over,
    # whatever their paths sort like
    for rel, entry in sorted(entries.items(), key=lambda item: (item[1].first_seen, item[0])):
        shown = f"{label}/{rel}"
        if entry.spec is not None and policy is not None:
            broken = policy_problems(policy, entry.spec, shown, entry.text)
            if broken:
                placeholder(
                    rel, invalid_dag_id(entry.spec.name if entry.spec.name not in owners else None, rel), broken
                )
                continue
        if entry.spec is None:
            placeholder(
                rel, invalid_dag_id(entry.name if entry.name not in owners else None, rel), list(entry.problems)
            )
            continue
        try:
            plans = plan_dags(entry.spec, shown, entry.text)
            reserved = [p.dag_id for p in plans if is_submit_dag(p.dag_id)]
            if reserved:
                message = f"DAG id {reserved[0]!r} is reserved for the DAGs of `flexorch submit`; rename the spec"
                raise SpecError(SpecProblem(shown, None, "name", message))
            taken = [p.dag_id for p in plans if p.dag_id in owners]
            if taken:
                message = f"DAG id {taken[0]!r} is already used by {label}/{owners[taken[0]]}; rename one of the specs"
                raise SpecError(SpecProblem(shown, None, "name", message))
            built = [build_dag(p, entry.spec, str((folder / rel).parent)) for p in plans]
        except Exception as e:
            placeholder(rel, invalid_dag_id(None, rel), problems_of(e, shown))
            continue
        for dag in built:
            dags[dag.dag_id] = dag
            owners[dag.dag_id] = rel
    if os.environ.get(SUBMIT_ENV, "1").lower() not in ("0", "false", "no", "off"):
        try:
            dags.update(build_submit_dags(policy_path, policy))  # spec names cannot take their ids
        except Exception:  # never let them take the spec DAGs down
            log.exception("flexorch: could not build the DAGs of `flexorch submit`")
    log.info(
        "flexorch: %d spec files in %s → %d DAGs (%d cached, %d parsed, %d invalid) in %.2fs",
        len(entries),
        folder,
        len(dags),
        stats["cached"],
        stats["parsed"],
        invalid,
        time.perf_counter() - started,
    )
    return dags
