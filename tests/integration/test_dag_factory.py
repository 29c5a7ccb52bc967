"""The drop-in loader and `flexorch generate` through Airflow's real DagBag.

Covers: one DAG per spec with tags/owner/docs/schedule/retries, pipelines with their edges,
services with deploy + reconcile DAGs, isolation of invalid specs (a placeholder DAG that
shows file, line and field), the content-hash cache, and generated files that are
identical to what the loader builds.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from flexorch_provider.dag_factory import folder
from flexorch_provider.dag_factory.build import INVALID_TAG, invalid_dag_id
from flexorch_provider.dag_factory.codegen import HEADER, generate
from flexorch_provider.dev.stack import LOADER_FILE, loader_source
from flexorch_provider.exceptions import SpecError
from flexorch_provider.spec.loader import iter_spec_files

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "spec_examples"


def dagbag(path: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(path))


@pytest.fixture
def dags_dir(tmp_path, monkeypatch):
    """A dags folder holding the loader file and a copy of the examples in specs/."""
    monkeypatch.setenv(folder.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(folder.SPECS_DIR_ENV, raising=False)
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(ROOT / "dags" / LOADER_FILE, dags / LOADER_FILE)
    shutil.copytree(EXAMPLES, dags / "specs")
    return dags


def test_repo_loader_file_is_the_packaged_one():
    assert (ROOT / "dags" / LOADER_FILE).read_text() == loader_source()


def test_every_example_becomes_its_dags(dags_dir):
    bag = dagbag(dags_dir)
    assert bag.import_errors == {}
    expected = {p.stem for p in iter_spec_files([EXAMPLES])} - {"embeddings-ssh-service"}
    expected |= {
        "embeddings-ssh",
        "embeddings-ssh-reconcile",
        "embeddings-ssh-watch",
        "flexorch-submit",
    }  # + `flexorch submit`'s
    assert set(bag.dag_ids) == expected

    scoring = bag.dags["nightly-scoring"]
    assert {"flexorch", "kind:inference", "target:slurm", "target:ssh", "team:risk", "nightly"} <= set(scoring.tags)
    assert scoring.owner == "risk"
    assert scoring.catchup is True
    assert scoring.start_date == dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    assert scoring.schedule == "@daily"
    assert "Scores yesterday's transactions" in scoring.description
    assert "--date {{ ds }}" in scoring.doc_md  # the spec as written is in the docs
    (task,) = scoring.tasks
    assert task.task_id == "inference"
    assert task.retries == 3 and task.retry_delay == dt.timedelta(minutes=10)

    hello = bag.dags["hello-local"]
    assert hello.schedule is None
    assert hello.tasks[0].retries == 1


def test_pipeline_is_one_dag_with_after_edges(dags_dir):
    dag = dagbag(dags_dir).dags["recsys-pipeline"]
    assert [t.task_id for t in dag.tasks] == ["extract-features", "train", "evaluate", "serve"]
    assert dag.get_task("train").upstream_task_ids == {"extract-features"}
    assert dag.get_task("serve").upstream_task_ids == {"evaluate"}
    assert dag.get_task("extract-features").upstream_task_ids == set()
    assert dag.get_task("train").retries == 1  # inherited from the pipeline
    assert dag.schedule == "0 3 * * 1"


def test_service_gets_deploy_dag_and_reconcile_only_where_needed(dags_dir):
    bag = dagbag(dags_dir)
    deploy = bag.dags["embeddings-ssh"]
    assert [t.task_id for t in deploy.tasks] == ["deploy"]
    assert deploy.params["action"] == "deploy"
    assert deploy.get_task("deploy").action == "{{ params.action }}"
    reconcile = bag.dags["embeddings-ssh-reconcile"]
    assert reconcile.schedule == "*/5 * * * *"
    assert reconcile.get_task("reconcile").action == "reconcile"
    assert "reconcile" in reconcile.tags
    watch = bag.dags["embeddings-ssh-watch"]
    assert type(watch.timetable).__name__ == "ContinuousTimetable" and watch.max_active_runs == 1
    assert watch.get_task("watch").action == "watch" and "watch" in watch.tags
    assert "chat-api" in bag.dags
    assert "chat-api-reconcile" not in bag.dag_ids and "chat-api-watch" not in bag.dag_ids  # Kubernetes heals itself


BAD_SPECS = {
    # file → (text, expected placeholder dag id, words in the docs)
    "typo.yaml": ("name: typo-job\nkind: batch\nrun: echo\nresorces: {cpus: 1}\n", "typo-job",
                  ["specs/typo.yaml:4", "resorces", "did you mean 'resources'"]),
    "syntax.yaml": ("name: [oops\n", "flexorch-invalid-syntax", ["specs/syntax.yaml", "invalid YAML"]),
    "dupe.yaml": ("name: hello-local\nkind: batch\nrun: echo dupe\n", "flexorch-invalid-dupe",
                  ["hello-local", "already used"]),
    "nested/binary.yml": (b"name: x\nkind: batch\nrun: \xff\xfe\n", "flexorch-invalid-nested_binary",
                          ["not UTF-8"]),
    # ~1 KB that would expand to 10**9 values: refused before anything walks it (it once hit
    # Airflow's import timeout and hid every DAG)
    "bomb.yaml": ("name: laughs\nkind: batch\nrun: echo\na: &a [" + ",".join(["lol"] * 10) + "]\n"
                  + "".join(f"{c}: &{c} [{','.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
                  "laughs", ["specs/bomb.yaml:", "aliases", "expand to more than"]),
    "control.yaml": ("name: ctl-char\nkind: batch\nrun: echo \x01\n", "ctl-char",
                     ["specs/control.yaml:3", "U+0001"]),
}  # fmt: skip


def test_invalid_specs_hide_nothing_and_show_their_errors(dags_dir):
    good = set(dagbag(dags_dir).dag_ids)
    for name, (text, _, _) in BAD_SPECS.items():
        path = dags_dir / "specs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    bag = dagbag(dags_dir)
    assert bag.import_errors == {}
    placeholders = {d for d in bag.dag_ids if INVALID_TAG in bag.dags[d].tags}
    assert good - placeholders <= set(bag.dag_ids)
    for name, (_, dag_id, words) in BAD_SPECS.items():
        assert dag_id in bag.dags, f"no placeholder for {name}: {sorted(bag.dag_ids)}"
        dag = bag.dags[dag_id]
        assert INVALID_TAG in dag.tags
        for word in words:
            assert word in dag.doc_md, (word, dag.doc_md)
        assert dag.dag_display_name.startswith("invalid spec: ")
        with pytest.raises(SpecError, match="does not validate"):
            dag.get_task("spec_error").execute({})
    # of the two files named hello-local, the one that had the name first keeps its DAG (dupe.yaml
    # sorts first, and used to take it over) and the new one becomes the placeholder saying so
    assert INVALID_TAG not in bag.dags["hello-local"].tags
    assert "echo dupe" not in bag.dags["hello-local"].doc_md
    dupes = [d for d in placeholders if "already used" in bag.dags[d].doc_md]
    assert len(dupes) == 1
    assert len(placeholders) == len(BAD_SPECS)
    # every good DAG is still there
    assert (good - {"hello-local"}) <= set(bag.dag_ids) - placeholders


def test_a_broken_spec_keeps_its_dag_id(dags_dir):
    spec = dags_dir / "specs" / "hello-local.yaml"
    spec.write_text(spec.read_text().replace("timeout: 5m", "timeout: 5 parsecs"))
    bag = dagbag(dags_dir)
    dag = bag.dags["hello-local"]
    assert INVALID_TAG in dag.tags
    assert "specs/hello-local.yaml:" in dag.doc_md and "timeout" in dag.doc_md


def test_unchanged_specs_come_from_the_cache(dags_dir):
    specs = dags_dir / "specs"
    n = len(list(iter_spec_files([specs])))
    _, stats = folder.load_entries(specs)
    assert stats == {"cached": 0, "parsed": n}
    _, stats = folder.load_entries(specs)
    assert stats == {"cached": n, "parsed": 0}
    spec = specs / "hello-local.yaml"
    spec.write_text(spec.read_text().replace("timeout: 5m", "timeout: 6m"))
    entries, stats = folder.load_entries(specs)
    assert stats == {"cached": n - 1, "parsed": 1}
    assert entries["hello-local.yaml"].spec.timeout == dt.timedelta(minutes=6)
    # the DAGs built from cached entries are the same as from fresh ones
    assert set(dagbag(dags_dir).dag_ids) == set(dagbag(dags_dir).dag_ids)


def test_a_corrupt_or_foreign_cache_is_ignored(dags_dir, caplog):
    specs = dags_dir / "specs"
    folder.load_entries(specs)
    cache = folder._cache_path(specs)
    cache.write_bytes(b"not a pickle")
    _, stats = folder.load_entries(specs)
    assert stats["parsed"] > 0 and "ignoring spec cache" in caplog.text
    os.chmod(cache, 0o666)  # anyone could have written it: not trusted
    _, stats = folder.load_entries(specs)
    assert stats["cached"] == 0


def test_a_new_spec_with_a_taken_name_does_not_take_the_dag_over(tmp_path, monkeypatch):
    """The file that had a name first keeps its DAG: a new file reusing the name becomes a
    placeholder, even when its path sorts first (it used to win), and still after the old file
    is edited."""
    monkeypatch.setenv(folder.CACHE_DIR_ENV, str(tmp_path / "cache"))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "hello.yaml").write_text("name: hello\nkind: batch\nrun: echo original\n")
    assert folder.load_folder(specs_dir=specs)["hello"].get_task("batch").run == "echo original"
    (specs / "a-dup.yaml").write_text("name: hello\nkind: batch\nrun: echo dup\n")
    dags = folder.load_folder(specs_dir=specs)
    assert dags["hello"].get_task("batch").run == "echo original"
    (placeholder,) = [d for d in dags.values() if INVALID_TAG in d.tags]
    assert "is already used by specs/hello.yaml" in placeholder.doc_md
    (specs / "hello.yaml").write_text("name: hello\nkind: batch\nrun: echo edited\n")
    assert folder.load_folder(specs_dir=specs)["hello"].get_task("batch").run == "echo edited"


def test_specs_dir_from_the_environment(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(folder.CACHE_DIR_ENV, str(tmp_path / "cache"))
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(EXAMPLES / "hello-local.yaml", other / "a.yaml")
    anchor = tmp_path / "dags" / LOADER_FILE
    monkeypatch.setenv(folder.SPECS_DIR_ENV, "../elsewhere")  # relative to the loader file
    assert list(folder.load_folder(anchor)) == ["hello-local", "flexorch-submit"]
    monkeypatch.setenv(folder.SPECS_DIR_ENV, str(tmp_path / "missing"))
    assert folder.load_folder(anchor) == {}
    assert "no specs folder" in caplog.text and "FLEXORCH_SPECS_DIR" in caplog.text


def _describe(dag):
    return {
        "tasks": sorted((t.task_id, tuple(sorted(t.upstream_task_ids)), t.retries, getattr(t, "action", None))
                        for t in dag.tasks),
        "schedule": dag.schedule, "start": dag.start_date, "catchup": dag.catchup,
        "tags": sorted(dag.tags), "owner": dag.owner, "doc": dag.doc_md, "description": dag.description,
        "params": dict(dag.params),
    }  # fmt: skip


def test_generated_files_equal_the_loaded_dags(dags_dir, tmp_path):
    out = tmp_path / "generated"
    result = generate(dags_dir / "specs", out)
    assert not result.problems and len(result.written) == len(list(iter_spec_files([EXAMPLES]))) + 1  # + submit
    generated = dagbag(out)
    assert generated.import_errors == {}
    loaded = dagbag(dags_dir)
    assert set(generated.dag_ids) == set(loaded.dag_ids)
    for dag_id in loaded.dag_ids:
        assert _describe(generated.dags[dag_id]) == _describe(loaded.dags[dag_id]), dag_id


def test_generate_is_idempotent_and_prunes_only_its_own_files(dags_dir, tmp_path):
    specs, out = dags_dir / "specs", tmp_path / "generated"
    generate(specs, out)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    again = generate(specs, out)
    assert again.written == [] and again.removed == [] and len(again.unchanged) == len(before)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before

    (out / "flexorch_handwritten.py").write_text("# my own DAG file, not generated\n")
    (specs / "hello-local.yaml").unlink()
    (specs / "bad.yaml").write_text("name: bad\nkind: batch\n")
    result = generate(specs, out)
    assert [p.name for p in result.removed] == ["flexorch_hello_local.py"]
    assert (out / "flexorch_handwritten.py").exists()
    assert [(p.file, p.field) for p in result.problems] == [("specs/bad.yaml", "run")]
    assert all(
        p.read_text().startswith(HEADER) for p in out.glob("flexorch_*.py") if p.name != "flexorch_handwritten.py"
    )


POLICY = """\
teams:
  risk:
    members: [rita]
    targets: [slurm]
  platform:
    members: [pat]
default_team: platform
"""


def test_a_spec_that_breaks_its_owners_policy_becomes_a_placeholder_naming_the_rule(dags_dir, monkeypatch):
    monkeypatch.setenv(folder.SUBMIT_ENV, "0")
    (dags_dir / "specs" / "flexorch_policy.yaml").write_text(POLICY)
    bag = dagbag(dags_dir)
    assert bag.import_errors == {} and "flexorch-submit" not in bag.dag_ids  # switched off
    scoring = bag.dags["nightly-scoring"]  # owner risk: target [slurm, ssh]
    assert INVALID_TAG in scoring.tags
    assert "policy: team risk: target ssh is not allowed (allowed: slurm)" in scoring.doc_md
    assert INVALID_TAG not in bag.dags["hello-local"].tags  # owner platform: a team without rules
    assert INVALID_TAG not in bag.dags["thumbnails-fleet"].tags  # owner media: no team, the default team's rules
    generated = generate(dags_dir / "specs", dags_dir.parent / "generated")
    assert any("team risk: target ssh is not allowed" in str(p) for p in generated.problems)

    (dags_dir / "specs" / "flexorch_policy.yaml").write_text(POLICY.replace("default_team: platform\n", ""))
    (dags_dir / "specs" / "ownerless.yaml").write_text("# no owner\nname: ownerless\nkind: batch\nrun: echo x\n")
    bag = dagbag(dags_dir)
    assert "specs/thumbnails-fleet.yaml:5: owner: 'media' is not a team of" in bag.dags["thumbnails-fleet"].doc_md
    # a spec that sets no owner is pointed at by its first key, and told its owner is the default one
    ownerless = next(d.doc_md for d in bag.dags.values() if "ownerless.yaml" in (d.doc_md or ""))
    assert "specs/ownerless.yaml:2: owner: 'airflow' (not set: the default owner) is not a team of" in ownerless

    (dags_dir / "specs" / "flexorch_policy.yaml").write_text(POLICY.replace("members: [pat]", "memebers: [pat]"))
    bag = dagbag(dags_dir)
    invalid = bag.dags["flexorch-invalid-policy"]
    assert "flexorch_policy.yaml:6: teams.platform.memebers: unknown key; did you mean 'members'?" in invalid.doc_md
    assert INVALID_TAG not in bag.dags["hello-local"].tags  # an invalid policy hides no spec


def test_each_team_of_the_policy_gets_its_own_submit_dag_with_its_roles(dags_dir, tmp_path):
    """Airflow shows a DAG's runs to whoever may read it: each team submits through its own DAG, its
    roles (airflow_roles) granted it by access_control; a spec cannot take a submit DAG's id."""
    (dags_dir / "specs" / "flexorch_policy.yaml").write_text(
        POLICY.replace("members: [rita]", "members: [rita]\n    airflow_roles: [risk-users]")
    )
    (dags_dir / "specs" / "taker.yaml").write_text("name: flexorch-submit-risk\nkind: batch\nrun: echo\n")
    bag = dagbag(dags_dir)
    assert bag.import_errors == {}
    assert {d for d in bag.dag_ids if d.startswith("flexorch-submit")} == {
        "flexorch-submit-risk",
        "flexorch-submit-platform",
    }
    risk = bag.dags["flexorch-submit-risk"]
    assert risk.get_task("check").submit_team == "risk" and risk.get_task("run").partial_kwargs["submit_team"] == "risk"
    assert risk.access_control == {
        "risk-users": {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}
    }
    assert bag.dags["flexorch-submit-platform"].access_control is None  # no roles: grants are set by hand
    assert "reserved for the DAGs of `flexorch submit`" in bag.dags[invalid_dag_id(None, "taker.yaml")].doc_md

    generated = generate(dags_dir / "specs", tmp_path / "generated")  # the generated file reads the policy too
    assert {d for d in dagbag(tmp_path / "generated").dag_ids if d.startswith("flexorch-submit")} == {
        "flexorch-submit-risk",
        "flexorch-submit-platform",
    }
    assert any("reserved for the DAGs" in str(p) for p in generated.problems)


def test_the_submit_dag_maps_its_run_task_over_the_checks_plan(dags_dir):
    dag = dagbag(dags_dir).dags["flexorch-submit"]
    check, run = dag.get_task("check"), dag.get_task("run")
    assert run.upstream_task_ids == {"check"} and type(run).__name__ == "MappedOperator"
    assert set(dag.params) == {"spec", "step", "set"} and dag.schedule is None
    assert check.policy_file == str(dags_dir / "specs" / "flexorch_policy.yaml")
