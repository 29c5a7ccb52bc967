"""GPU pools, defined once in a YAML file and referenced by name (``gpu_pool:`` in specs,
``GpuPoolSensor(pool=...)``, ``flexorch gpus``, ``flexorch pools sync``)::

    # gpu_pools.yaml
    lab:
      source: ssh
      connection: lab_gpu
      hosts: [lab-gpu-1, lab-gpu-2]
      python: /opt/venv/bin/python  # optional: NVML through flexorch-provider there, else nvidia-smi
    a100:
      source: slurm
      connection: slurm_login        # omit to use the local Slurm clients
      partition: gpu
    l4-nodes:
      source: kubernetes
      connection: kubernetes_default
      node_selector: {pool: inference}
    worker:
      source: local

The file is ``$FLEXORCH_GPU_POOLS``, else ``gpu_pools.yaml`` in the spec folder beside
the loader (``<dags folder>/specs/``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Discriminator, Field, Tag, TypeAdapter, ValidationError

from flexorch_provider.exceptions import ConfigurationError, SpecError, SpecProblem
from flexorch_provider.spec.fields import ConnId, FlexModel, Name
from flexorch_provider.spec.targets import host_entry, unique_hosts

FILE_NAME = "gpu_pools.yaml"


class _Pool(FlexModel):
    name: Annotated[str, Field(description="Set from the key in the file.")] = ""

    @property
    def airflow_pool(self) -> str:
        return airflow_pool_name(self.name)


class LocalPool(_Pool):
    source: Literal["local"]


class SshPool(_Pool):
    source: Literal["ssh"]
    connection: ConnId = "ssh_default"
    hosts: Annotated[list[Annotated[str, BeforeValidator(host_entry)]], BeforeValidator(unique_hosts)] = Field(
        default_factory=list
    )
    python: Annotated[
        str,
        Field(
            min_length=1,
            pattern=r"^[^\s]+$",
            description="The hosts' Python: where flexorch-provider and pynvml are installed there, the probe "
            "reads NVML through it; elsewhere (or when it fails) it asks nvidia-smi.",
        ),
    ] = "python3"


class SlurmPool(_Pool):
    source: Literal["slurm"]
    connection: ConnId | None = None
    partition: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_.\-]+$")] = None


class KubernetesPool(_Pool):
    source: Literal["kubernetes"]
    connection: ConnId = "kubernetes_default"
    gpu_label: str = "nvidia.com/gpu.product"
    node_selector: dict[str, str] = Field(default_factory=dict)


GpuPool = Annotated[
    Annotated[LocalPool, Tag("local")]
    | Annotated[SshPool, Tag("ssh")]
    | Annotated[SlurmPool, Tag("slurm")]
    | Annotated[KubernetesPool, Tag("kubernetes")],
    Discriminator(lambda v: v.get("source") if isinstance(v, dict) else getattr(v, "source", None)),
]
_POOLS = TypeAdapter(dict[Name, GpuPool])


def airflow_pool_name(pool: str) -> str:
    """The Airflow pool that counts this GPU pool's GPUs (``flexorch pools sync``)."""
    return f"gpu-{pool}"


def pools_file(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("FLEXORCH_GPU_POOLS"):
        return Path(os.environ["FLEXORCH_GPU_POOLS"])
    from airflow.configuration import conf

    return Path(conf.get("core", "dags_folder")) / "specs" / FILE_NAME


def load_pools(path: str | Path | None = None) -> dict[str, Any]:
    file = pools_file(path)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except FileNotFoundError:
        raise ConfigurationError(
            f"no GPU pools file at {file}: create it (see `flexorch gpus --help`) or set FLEXORCH_GPU_POOLS"
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(f"not valid YAML: {e}", file=str(file)) from None
    if not isinstance(data, dict):
        raise SpecError("a GPU pools file maps pool names to pools (name: {source: ..., ...})", file=str(file))
    try:
        pools = _POOLS.validate_python(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = [str(p) for p in err["loc"]]
            if len(loc) > 1 and loc[1] in ("local", "ssh", "slurm", "kubernetes"):
                del loc[1]  # the union's tag, not a field
            message = err["msg"].removeprefix("Value error, ").removeprefix(f"{loc[-1]}: ")
            if err["type"] == "extra_forbidden":
                kinds: dict[str, type[_Pool]] = {
                    "ssh": SshPool,
                    "slurm": SlurmPool,
                    "kubernetes": KubernetesPool,
                    "local": LocalPool,
                }
                model = kinds.get(str(err["loc"][1]) if len(err["loc"]) > 1 else "", _Pool)
                hint = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
                message = f"unknown field{f'; did you mean {hint[0]!r}?' if hint else ''}"
            problems.append(SpecProblem(str(file), None, ".".join(loc), message))
        raise SpecError(problems) from None
    for name, pool in pools.items():
        pool.name = name
    return pools


def get_pool(name: str, path: str | Path | None = None) -> Any:
    pools = load_pools(path)
    if name not in pools:
        known = ", ".join(sorted(pools)) or "none"
        raise ConfigurationError(f"GPU pool {name!r} is not defined in {pools_file(path)} (defined: {known})")
    return pools[name]
