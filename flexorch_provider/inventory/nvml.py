"""This machine's NVIDIA GPUs through NVML (pynvml).

It imports nothing but pynvml and the standard library, so one piece of code serves two
places: the worker (``source: local`` pools) and SSH hosts where flexorch-provider is
installed, where the inventory runs ``python3 -m flexorch_provider.inventory.nvml``: it prints one
JSON object and exits 0, or says on stderr why NVML cannot be read and exits 3 (the
inventory then asks ``nvidia-smi``).

Memory is in MiB, utilization in percent; ``name`` is NVML's raw device name.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

NO_NVML_EXIT = 3


class NoNvml(Exception):
    """NVML cannot be read here; the message says why."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read() -> list[dict[str, Any]]:
    """One dict per GPU: index, uuid, name, memory_total, memory_used, utilization, processes."""
    try:
        import pynvml
    except ImportError:
        raise NoNvml("pynvml is not installed") from None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        raise NoNvml(f"no NVIDIA driver (NVML: {e})") from None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                uuid = _text(pynvml.nvmlDeviceGetUUID(h))
            except Exception:
                uuid = None
            try:
                util: int | None = int(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception:  # not supported on some boards and MIG instances
                util = None
            try:
                procs = len(pynvml.nvmlDeviceGetComputeRunningProcesses(h))
            except Exception:
                procs = 0
            gpus.append(
                {
                    "index": i,
                    "uuid": uuid,
                    "name": _text(pynvml.nvmlDeviceGetName(h)),
                    "memory_total": int(mem.total // 2**20),
                    "memory_used": int(mem.used // 2**20),
                    "utilization": util,
                    "processes": procs,
                }
            )
        return gpus
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def main() -> int:
    try:
        gpus = read()
    except NoNvml as e:
        print(f"flexorch nvml: {e}", file=sys.stderr)
        return NO_NVML_EXIT
    print(json.dumps({"host": socket.gethostname(), "gpus": gpus}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
