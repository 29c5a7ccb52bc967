"""Parsers for the human-friendly values in specs: durations, memory sizes, GPU requests.

Each parser accepts what a user naturally types and returns one canonical value; each
formatter turns that value back into the shortest string the parser accepts, so a
rendered spec round-trips.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

_DURATION_RE = re.compile(
    r"^\s*(?:(?P<d>\d+)\s*d)?\s*(?:(?P<h>\d+)\s*h)?\s*(?:(?P<m>\d+)\s*m(?:in)?)?\s*(?:(?P<s>\d+)\s*s)?\s*$",
    re.IGNORECASE,
)
MAX_DURATION = timedelta(days=366)


def parse_duration(value: Any) -> timedelta:
    """``90`` (seconds), ``"90s"``, ``"30m"``, ``"6h"``, ``"1d"``, ``"1h30m"`` → timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"expected a duration like '30m' or '6h', got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not value.strip() or not match or not any(match.groupdict().values()):
            raise ValueError(
                f"{value!r} is not a duration; write a number of seconds or e.g. '90s', '30m', '6h', '1d', '1h30m'"
            )
        parts = {k: int(v) for k, v in match.groupdict().items() if v}
        seconds = parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    else:
        raise ValueError(f"expected a duration like '30m' or '6h', got {type(value).__name__}")
    if seconds != seconds or seconds < 0:  # NaN or negative
        raise ValueError(f"a duration must be zero or positive, got {value!r}")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{value!r} is longer than the maximum of 366 days")
    return timedelta(seconds=int(seconds))


def format_duration(value: timedelta) -> str:
    """timedelta → ``"1h30m"`` (the shortest form :func:`parse_duration` reads back)."""
    total = int(value.total_seconds())
    if total == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


_MEMORY_UNITS = {
    "": None,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
}
_MEMORY_RE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<u>[a-zA-Z]*)\s*$")
MAX_MEMORY = 1024**5  # 1 PiB: anything bigger is a typo


def is_memory_string(value: str) -> bool:
    match = _MEMORY_RE.match(value)
    return bool(match and match.group("u") and match.group("u").lower() in _MEMORY_UNITS)


def parse_memory(value: Any) -> int:
    """``"64Gi"``, ``"512Mi"``, ``"80GB"``, ``"1.5Gi"`` → bytes. A bare number is refused."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a memory size like '16Gi' or '512Mi', got {type(value).__name__}")
    if isinstance(value, int | float):
        raise ValueError(
            f"memory {value!r} has no unit; write e.g. '{value}Gi' (GiB), '{value}Mi' (MiB) or '{value}GB'"
        )
    match = _MEMORY_RE.match(value)
    unit = match.group("u").lower() if match else ""
    if not match or unit not in _MEMORY_UNITS:
        raise ValueError(f"{value!r} is not a memory size; write e.g. '16Gi', '512Mi' or '80GB'")
    if not unit:
        raise ValueError(f"memory {value!r} has no unit; write e.g. '{value.strip()}Gi' or '{value.strip()}Mi'")
    size = int(float(match.group("n")) * (_MEMORY_UNITS[unit] or 1))  # "" (no unit) was refused above
    if size <= 0:
        raise ValueError(f"memory must be more than zero, got {value!r}")
    if size > MAX_MEMORY:
        raise ValueError(f"memory {value!r} is larger than 1 PiB; check the unit")
    return size


def format_memory(size: int) -> str:
    """bytes → the exact form with the smallest number: ``"64Gi"``, ``"512Mi"``, ``"80GB"``."""
    units = (
        ("Ti", 1024**4),
        ("TB", 1000**4),
        ("Gi", 1024**3),
        ("GB", 1000**3),
        ("Mi", 1024**2),
        ("MB", 1000**2),
        ("Ki", 1024),
        ("KB", 1000),
    )
    exact = [(size // factor, unit) for unit, factor in units if size % factor == 0]
    if not exact:
        return f"{max(size // 1024, 1)}Ki"
    number, unit = min(exact)
    return f"{number}{unit}"


# --- GPU model names -------------------------------------------------------------------
_GPU_TYPE_RE = re.compile(r"^[A-Z][A-Z0-9.]{0,31}$")  # a model name starts with a letter: "1E3" is a number
KNOWN_GPU_TYPES = (
    "A10",
    "A10G",
    "A30",
    "A40",
    "A100",
    "A6000",
    "B100",
    "B200",
    "GB200",
    "H100",
    "H200",
    "L4",
    "L40",
    "L40S",
    "P100",
    "RTX3090",
    "RTX4090",
    "RTX6000",
    "T4",
    "V100",
)


def normalize_gpu_type(value: str) -> str:
    """``"nvidia-a100"``, ``"a100"``, ``"Tesla V100"``, ``"rtx_4090"`` → ``"A100"``, ``"V100"``, ``"RTX4090"``."""
    text = re.sub(r"[\s_\-]+", "", str(value)).upper()
    for prefix in ("NVIDIA", "TESLA", "GEFORCE"):
        if text.startswith(prefix) and len(text) > len(prefix):
            text = text[len(prefix) :]
    if not _GPU_TYPE_RE.match(text):
        raise ValueError(
            f"{value!r} is not a GPU model; use a model name like 'A100', 'H100' or 'L4' (a letter, then letters "
            "and digits)"
        )
    return text


def parse_gpu_shorthand(value: Any) -> Any:
    """``2`` / ``"A100"`` / ``"A100:2"`` / ``"A100:80GB:2"`` → a mapping for the GPU model.

    A mapping (or an already-built model) is passed through for field validation.
    """
    if isinstance(value, bool):
        raise ValueError("gpus must be a count like 2, a string like 'A100:2', or a mapping with count/type/memory")
    if isinstance(value, int):
        return {"count": value}
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(":")]
        if not value.strip() or any(not p for p in parts) or len(parts) > 3:
            raise ValueError(f"{value!r} is not a GPU request; write e.g. 2, 'A100', 'A100:2' or 'A100:80GB:2'")
        out: dict[str, Any] = {}
        if parts[-1].isdigit():
            out["count"] = int(parts.pop())
        elif re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", parts[-1]):
            raise ValueError(f"{value!r}: the GPU count must be a whole number 0 or more, like 2 or 'A100:2'")
        for part in parts:
            key = "memory" if is_memory_string(part) else "type"
            if key in out:
                raise ValueError(f"{value!r} names the GPU {key} twice; write e.g. 'A100:80GB:2'")
            out[key] = part
        out.setdefault("count", 1)
        return out
    return value
