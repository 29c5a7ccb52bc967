"""Every bad spec gets a SpecError naming file, line, field and a useful message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flexorch_provider.exceptions import SpecError
from flexorch_provider.spec import load_spec

GOOD = """\
name: demo
kind: batch
run: echo hi
"""

# (id, yaml, line, field, words the message must contain)
CASES = [
    ("typo-top", GOOD + "resorces: {cpus: 2}\n", 4, "resorces", "did you mean 'resources'"),
    ("typo-nested", GOOD + "resources:\n  cpu: 2\n", 5, "resources.cpu", "did you mean 'cpus'"),
    ("typo-slurm", GOOD + "slurm:\n  partiton: gpu\n", 5, "slurm.partiton", "did you mean 'partition'"),
    ("typo-k8s", GOOD + "kubernetes:\n  namespce: ml\n", 5, "kubernetes.namespce", "did you mean 'namespace'"),
    ("key-of-other-kind", GOOD + "replicas: 2\n", 4, "replicas", "only valid for kind service"),
    ("missing-kind", "name: demo\nrun: echo\n", 1, "kind", "set kind to one of"),
    ("bad-kind", "name: demo\nkind: trainig\nrun: echo\n", 2, "kind", "did you mean 'training'"),
    ("missing-run", "name: demo\nkind: batch\n", 1, "run", "required"),
    ("missing-name", "kind: batch\nrun: echo\n", 1, "name", "required"),
    ("upper-name", "name: My_Job\nkind: batch\nrun: echo\n", 1, "name", "try 'my-job'"),
    ("shell-name", "name: 'a;rm -rf /'\nkind: batch\nrun: echo\n", 1, "name", "not a valid name"),
    ("long-name", f"name: {'a' * 70}\nkind: batch\nrun: echo\n", 1, "name", "limit is 63"),
    ("bad-target", GOOD + "target: slrum\n", 4, "target", "did you mean 'slurm'"),
    ("dup-target", GOOD + "target: [ssh, ssh]\n", 4, "target", "listed twice"),
    ("gpu-string-negative", GOOD + "resources:\n  gpus: '-1'\n", 5, "resources.gpus", "whole number 0 or more"),
    ("gpu-string-exponent", GOOD + "resources:\n  gpus: '1e3'\n", 5, "resources.gpus", "whole number 0 or more"),
    ("gpu-model-digits", GOOD + "resources:\n  gpus: '100:2'\n", 5, "resources.gpus", "not a GPU model"),
    ("catchup-yes", GOOD + "catchup: 'yes'\n", 4, "catchup", "write true or false"),
    ("catchup-NO", GOOD + "catchup: NO\n", 4, "catchup", "yes, no, on, off are text"),
    ("cpus-quoted", GOOD + "resources:\n  cpus: '2'\n", 5, "resources.cpus", "without quotes"),
    ("nodes-bool", GOOD + "resources:\n  nodes: true\n", 5, "resources.nodes", "valid integer"),
    (
        "surge-huge",
        "name: s\nkind: service\nrun: x\nupdate:\n  max_surge: 1000000000000000000000000000000\n",
        5,
        "update.max_surge",
        "less than or equal to 1000",
    ),
    (
        "service-on-slurm",
        "name: s\nkind: service\nrun: serve\ntarget: [slurm, ssh]\n",
        4,
        "target",
        "slurm cannot run services; a service runs on kubernetes, ssh, local",
    ),
    ("k8s-no-image", GOOD + "target: kubernetes\n", 1, "image", "required because target includes 'kubernetes'"),
    # local ignored resources.nodes, while policies and first-free counted N nodes; ssh starts one node per host
    ("nodes-local", GOOD + "resources:\n  nodes: 2\n", 5, "resources.nodes", "local starts a job on one machine"),
    (
        "nodes-ssh-fallback",
        GOOD + "target: [slurm, ssh]\nresources:\n  nodes: 4\n",
        6,
        "resources.nodes",
        "4 nodes on the ssh target need at least 4 hosts in ssh.hosts (one node per host); it lists 0",
    ),
    (
        "nodes-ssh-all",
        GOOD + "target: ssh\nssh: {hosts: [a, b], placement: all}\nresources:\n  nodes: 2\n",
        7,
        "resources.nodes",
        "ssh.placement: all starts an independent copy on every host",
    ),
    ("gpu-shorthand", GOOD + "resources:\n  gpus: 'A100:two:x:y'\n", 5, "resources.gpus", "not a GPU request"),
    ("gpu-negative", GOOD + "resources:\n  gpus: -1\n", 5, "resources.gpus", "greater than or equal to 0"),
    ("gpu-type-chars", GOOD + "resources:\n  gpus: 'A100$(x):2'\n", 5, "resources.gpus", "not a GPU model"),
    ("memory-no-unit", GOOD + "resources:\n  memory: 64\n", 5, "resources.memory", "no unit"),
    ("memory-bad-unit", GOOD + "resources:\n  memory: 64XB\n", 5, "resources.memory", "not a memory size"),
    ("cpus-zero", GOOD + "resources:\n  cpus: 0\n", 5, "resources.cpus", "greater than 0"),
    ("nodes-zero", GOOD + "resources:\n  nodes: 0\n", 5, "resources.nodes", "greater than or equal to 1"),
    ("timeout-bad", GOOD + "timeout: soon\n", 4, "timeout", "not a duration"),
    ("retries-neg", GOOD + "retries: {count: -1}\n", 4, "retries.count", "greater than or equal to 0"),
    ("literal-secret", GOOD + "secrets:\n  HF_TOKEN: hf_abc123\n", 5, "secrets.HF_TOKEN", "never a literal value"),
    (
        "k8s-secret-on-ssh",
        GOOD + "target: ssh\nsecrets:\n  T: kubernetes:s/k\n",
        5,
        "secrets",
        "only the kubernetes target",
    ),
    ("bad-env-name", GOOD + "env:\n  'BAD-NAME': x\n", 4, "env", "not a valid environment variable name"),
    ("env-secret-clash", GOOD + "env: {T: x}\nsecrets: {T: 'variable:t'}\n", 4, "env", "both set T"),
    ("bad-cron", GOOD + "schedule: '61 * * * *'\n", 4, "schedule", "not a valid cron expression"),
    ("bad-preset", GOOD + "schedule: '@dialy'\n", 4, "schedule", "did you mean '@daily'"),
    ("catchup-no-start", GOOD + "schedule: '@daily'\ncatchup: true\n", 1, "start_date", "required because catchup"),
    ("slurm-option", GOOD + "slurm:\n  options: {output: /tmp/x}\n", 5, "slurm.options", "not allowed"),
    (
        "slurm-option-typo",
        GOOD + "slurm:\n  options: {exlusive: true}\n",
        5,
        "slurm.options",
        "did you mean 'exclusive'",
    ),
    (
        "toleration-op",
        GOOD + "kubernetes:\n  tolerations:\n    - {key: a, operator: Exist}\n",
        6,
        "kubernetes.tolerations[0].operator",
        "did you mean 'Exists'",
    ),
    (
        "bad-label",
        GOOD + "kubernetes:\n  labels: {'te am': x}\n",
        5,
        "kubernetes.labels",
        "not a valid Kubernetes label key",
    ),
    ("ssh-host", GOOD + "ssh:\n  hosts: ['a b']\n", 5, "ssh.hosts[0]", "not a host"),
    ("ssh-placement", GOOD + "ssh:\n  placement: every\n", 5, "ssh.placement", "'any' or 'all'"),
    (
        "http-health-no-port",
        "name: s\nkind: service\nrun: x\nhealth: {http: /h}\n",
        1,
        "port",
        "required because health.http",
    ),
    (
        "health-both",
        "name: s\nkind: service\nrun: x\nport: 80\nhealth: {http: /h, command: 'true'}\n",
        5,
        "health",
        "exactly one",
    ),
    ("port-range", "name: s\nkind: service\nrun: x\nport: 70000\n", 4, "port", "less than or equal to 65535"),
    (
        "update-stuck",
        "name: s\nkind: service\nrun: x\nupdate: {max_surge: 0, max_unavailable: 0}\n",
        4,
        "update.max_surge",
        "never progress",
    ),
    (
        "pipeline-after",
        "name: p\nkind: pipeline\nsteps:\n  - {name: a, run: x}\n  - {name: b, run: x, after: [c]}\n",
        5,
        "steps[1].after",
        "'c' is not a step",
    ),
    (
        "pipeline-after-typo",
        "name: p\nkind: pipeline\nsteps:\n  - {name: prep, run: x}\n  - {name: b, run: x, after: prp}\n",
        5,
        "steps[1].after",
        "did you mean 'prep'",
    ),
    (
        "pipeline-cycle",
        "name: p\nkind: pipeline\nsteps:\n  - {name: a, run: x, after: b}\n  - {name: b, run: x, after: a}\n",
        3,
        "steps",
        "cycle",
    ),
    (
        "pipeline-dup",
        "name: p\nkind: pipeline\nsteps:\n  - {name: a, run: x}\n  - {name: a, run: y}\n",
        3,
        "steps",
        "a used more than once",
    ),
    (
        "pipeline-self",
        "name: p\nkind: pipeline\nsteps:\n  - {name: a, run: x, after: a}\n",
        4,
        "steps[0].after",
        "after itself",
    ),
    (
        "pipeline-step-kind",
        "name: p\nkind: pipeline\nsteps:\n  - {name: a, kind: trainng, run: x}\n",
        4,
        "steps[0].kind",
        "did you mean 'training'",
    ),
    (
        "pipeline-step-typo",
        "name: p\nkind: pipeline\nsteps:\n  - name: a\n    rnu: x\n",
        5,
        "steps[0].rnu",
        "did you mean 'run'",
    ),
    (
        "pipeline-step-k8s",
        "name: p\nkind: pipeline\nsteps:\n  - {name: a, run: x, target: kubernetes}\n",
        4,
        "steps[0].image",
        "required because target",
    ),
    ("pipeline-no-steps", "name: p\nkind: pipeline\nsteps: []\n", 3, "steps", "at least 1"),
    ("pipeline-run", "name: p\nkind: pipeline\nrun: x\nsteps:\n  - {name: a, run: x}\n", 3, "run", "unknown key"),
    ("shm-no-image", GOOD + "resources: {shm: 1Gi}\n", 4, "resources.shm", "needs image"),
    (
        "checkpoint-k8s-no-claim",
        GOOD + "target: kubernetes\nimage: py\ncheckpoint_dir: /ckpt\n",
        6,
        "checkpoint_dir",
        "add kubernetes.checkpoint_claim",
    ),
    (
        "checkpoint-k8s-relative",
        GOOD + "target: kubernetes\nimage: py\ncheckpoint_dir: ckpt\nkubernetes: {checkpoint_claim: c}\n",
        6,
        "checkpoint_dir",
        "must be an absolute path on the kubernetes target",
    ),
    (
        "claim-no-dir",
        GOOD + "kubernetes: {checkpoint_claim: c}\n",
        4,
        "kubernetes.checkpoint_claim",
        "set checkpoint_dir",
    ),
    (
        "warn-image-slurm",
        GOOD + "target: slurm\nimage: py\nwarn_before: {before: 1m}\n",
        6,
        "warn_before",
        "not yet for a job in an image on the slurm target",
    ),
    ("warn-long", GOOD + "timeout: 1m\nwarn_before: {before: 2m}\n", 5, "warn_before.before", "shorter than timeout"),
    ("run-empty-list", GOOD.replace("run: echo hi", "run: []"), 3, "run", "at least 1"),
    ("run-nul", GOOD.replace("run: echo hi", 'run: "a\\0b"'), 3, "run", "NUL"),
    ("dup-key", GOOD + "name: other\n", 4, "name", "duplicate key (first set on line 1)"),
    ("yaml-syntax", GOOD + "env: {A: [1, 2}\n", 4, "", "invalid YAML"),
    ("not-mapping", "- a\n- b\n", 1, "", "must be a mapping"),
    ("empty", "", 1, "", "empty"),
    ("tabs", "name: a\n\tkind: batch\n", 2, "", "invalid YAML"),
]


@pytest.mark.parametrize(("text", "line", "field", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_names_file_line_field(tmp_path: Path, text: str, line: int, field: str, words: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = info.value.problems
    matching = [p for p in problems if p.field == field]
    assert matching, f"no problem for field {field!r}; got {[str(p) for p in problems]}"
    problem = matching[0]
    assert problem.file == str(path)
    assert problem.line == line, str(problem)
    assert words in problem.message, str(problem)
    assert str(problem).startswith(f"{path}:{line}: ")


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


def test_spec_error_is_value_error(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ValueError):
        load_spec(path)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: x
            kind: batch
            run: echo
            resources: {cpus: -1, memory: 3}
            timeout: forever
            """
        )
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    fields = {p.field for p in info.value.problems}
    assert {"resources.cpus", "resources.memory", "timeout"} <= fields


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(path)
