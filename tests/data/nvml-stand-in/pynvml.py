"""Test stand-in for pynvml (NVML itself needs a GPU and its driver): serves the devices
recorded in the JSON file $FLEXORCH_TEST_NVML (default ~/nvml.json). Only the calls
flexorch_provider.inventory.nvml makes exist. Without the file, nvmlInit fails as it does on a
machine without the driver."""

import json
import os
from types import SimpleNamespace


class NVMLError(Exception):
    pass


_devices = None


def nvmlInit():
    global _devices
    path = os.environ.get("FLEXORCH_TEST_NVML") or os.path.expanduser("~/nvml.json")
    try:
        with open(path) as f:
            _devices = json.load(f)
    except OSError:
        raise NVMLError("Driver Not Loaded") from None


def nvmlShutdown():
    pass


def nvmlDeviceGetCount():
    return len(_devices)


def nvmlDeviceGetHandleByIndex(i):
    return _devices[i]


def nvmlDeviceGetName(h):
    return h["name"]


def nvmlDeviceGetUUID(h):
    return h["uuid"]


def nvmlDeviceGetMemoryInfo(h):
    return SimpleNamespace(total=h["total_mib"] * 2**20, used=h["used_mib"] * 2**20, free=0)


def nvmlDeviceGetUtilizationRates(h):
    if h.get("utilization") is None:
        raise NVMLError("Not Supported")
    return SimpleNamespace(gpu=h["utilization"], memory=0)


def nvmlDeviceGetComputeRunningProcesses(h):
    return [SimpleNamespace(pid=p, usedGpuMemory=0) for p in h.get("pids", [])]
