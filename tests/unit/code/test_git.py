"""code.git: the worker fetches the repository at ref (flexorch_provider/code.py); its token never
reaches a command line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from flexorch_provider.code import bundle_for, fetch_git
from flexorch_provider.exceptions import ConfigurationError, SpecError
from flexorch_provider.resolve import load_workload
from flexorch_provider.submission import parse_submission
from tests.gitrepo import git_repo


def repo(root: Path) -> Path:
    git = git_repo(root, {"src/train.py": "print(1)\n", "README": "r\n"})
    subprocess.run([*git, "tag", "v1"], check=True)
    return root


def test_a_ref_and_a_folder_of_a_repository_become_a_bundle(tmp_path):
    url = repo(tmp_path / "r").as_uri()
    spec = {"name": "t", "kind": "batch", "run": "python train.py"}
    b = bundle_for(load_workload({**spec, "code": {"git": url, "ref": "v1", "path": "src"}}), None)
    assert b is not None and [f.path for f in b.files] == ["train.py"] and b.git is not None
    assert b.summary().endswith(f"from {url} at {b.git.commit[:12]}") and len(b.git.commit) == 40
    whole = bundle_for(load_workload({**spec, "code": {"git": url}}), None)
    assert whole is not None and [f.path for f in whole.files] == ["README", "src/train.py"]  # no .git
    with pytest.raises(ConfigurationError, match="cannot fetch nope of"):
        bundle_for(load_workload({**spec, "code": {"git": url, "ref": "nope"}}), None)
    with pytest.raises(ConfigurationError, match="is not a folder of"):
        bundle_for(load_workload({**spec, "code": {"git": url, "path": "docs"}}), None)


def test_the_token_reaches_git_in_its_environment_only(tmp_path, monkeypatch):
    seen = tmp_path / "seen.jsonl"
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text(
        "#!/usr/bin/python3\nimport json, os, sys\n"
        f"open({str(seen)!r}, 'a').write(json.dumps([sys.argv[1:], os.environ.get('FLEXORCH_GIT_TOKEN')]) + '\\n')\n"
        "print('0' * 40 if 'rev-parse' in sys.argv else '')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.setenv("AIRFLOW_CONN_FLEX_GIT", json.dumps({"conn_type": "generic", "password": "tok-secret-123"}))
    got = fetch_git("https://git.example.org/acme/train.git", "main", tmp_path / "into", "flex_git")
    assert got.commit == "0" * 40 and got.user == "x-access-token" and "tok-secret-123" not in repr(got)
    calls = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [c[0][c[0].index("-c") + 4] if "-c" in c[0] else None for c in calls][1] == "fetch"
    assert all("tok-secret-123" not in " ".join(argv) and token == "tok-secret-123" for argv, token in calls)
    assert any(a.startswith("credential.helper=!f()") for a in calls[1][0])


def test_a_submitted_spec_fetches_over_https_only_and_its_token_is_the_policys_to_allow():
    text = "name: t\nkind: batch\nrun: python train.py\ncode: {git: 'file:///home/airflow/dags'}\n"
    with pytest.raises(SpecError, match=r"code\.git: a submitted spec fetches its code over https:// only"):
        parse_submission({"spec": text})
    from flexorch_provider.policy.model import Team
    from flexorch_provider.policy.rules import static_refusals

    job = load_workload({"name": "t", "kind": "batch", "run": "x",
                         "code": {"git": "https://git.example.org/a.git", "connection": "prod_token"}})  # fmt: skip
    assert any("code.connection prod_token" in r for r in static_refusals("nlp", Team(members=["a"]), job))
    allowed = Team(members=["a"], secrets=["connection:git_*"])
    assert any("code.connection prod_token is not a connection the team may use" in r
               for r in static_refusals("nlp", allowed, job))  # fmt: skip
    ok = load_workload({"name": "t", "kind": "batch", "run": "x",
                        "code": {"git": "https://git.example.org/a.git", "connection": "git_ro"}})  # fmt: skip
    assert not any("code.connection" in r for r in static_refusals("nlp", allowed, ok))
