"""What a spec needs before flexorch up unpauses its DAGs: every connection it names."""

from __future__ import annotations

from pathlib import Path

from flexorch_provider.cli.needs import connections_of, folder_needs
from flexorch_provider.spec.loader import load_spec
from flexorch_provider.spec.render import spec_to_dict

EXAMPLES = Path(__file__).parents[3] / "spec_examples"


def needs(name: str) -> dict[str, str]:
    return connections_of(spec_to_dict(load_spec(EXAMPLES / f"{name}.yaml")))


def test_every_target_of_a_list_and_secret_and_registry_connections_count():
    assert needs("llm-finetune") == {
        "slurm_login": "slurm target",
        "kubernetes_default": "kubernetes target",
        "ghcr_acme": "image registry login",
        "wandb": "secret WANDB_API_KEY",
    }


def test_pipeline_steps_each_add_theirs_and_local_slurm_needs_no_connection():
    assert needs("recsys-pipeline") == {
        "kubernetes_default": "kubernetes target",
        "warehouse": "secret WAREHOUSE_PASSWORD",
    }
    assert needs("hello-local") == {}


def test_a_folder_maps_each_dag_of_a_spec_to_its_needs(tmp_path):
    for name in ("embeddings-ssh-service", "hello-ssh"):
        (tmp_path / f"{name}.yaml").write_text((EXAMPLES / f"{name}.yaml").read_text())
    (tmp_path / "broken.yaml").write_text("name: x\nkind: nope\n")  # left to its error DAG
    found = {n.spec: n for n in folder_needs(tmp_path)}
    assert set(found) == {"embeddings-ssh", "hello-ssh"}
    assert {"embeddings-ssh", "embeddings-ssh-reconcile", "embeddings-ssh-watch"} <= set(
        found["embeddings-ssh"].dag_ids
    )
    assert found["hello-ssh"].missing(lambda c: False) == ["connection demo_fleet (ssh target)"]
    assert found["hello-ssh"].missing(lambda c: c == "demo_fleet") == []
