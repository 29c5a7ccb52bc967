from datetime import timedelta

import pytest

from flexorch_provider.spec.units import (
    format_duration,
    format_memory,
    normalize_gpu_type,
    parse_duration,
    parse_gpu_shorthand,
    parse_memory,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90),
        ("90s", 90),
        ("30m", 1800),
        ("6h", 21600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("2h 5m 3s", 7503),
        ("0s", 0),
    ],
)
def test_durations_round_trip(text, seconds):
    value = parse_duration(text)
    assert value == timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("bad", ["", "soon", "5x", "-3m", -1, True, "1h-2m", float("nan"), "400d"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size", "canonical"),
    [
        ("64Gi", 64 * 2**30, "64Gi"),
        ("512Mi", 512 * 2**20, "512Mi"),
        ("80GB", 80 * 10**9, "80GB"),
        ("1.5Gi", 3 * 2**29, "1536Mi"),
        ("2Ti", 2 * 2**40, "2Ti"),
        ("16G", 16 * 10**9, "16GB"),
    ],
)
def test_memory(text, size, canonical):
    assert parse_memory(text) == size
    assert format_memory(size) == canonical
    assert parse_memory(format_memory(size)) == size


@pytest.mark.parametrize("bad", [64, "64", "64XB", "Gi", "0Mi", "9999Ti", True, None])
def test_bad_memory(bad):
    with pytest.raises(ValueError):
        parse_memory(bad)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("a100", "A100"), ("nvidia-a100", "A100"), ("Tesla V100", "V100"), ("rtx_4090", "RTX4090"), ("H100", "H100")],
)
def test_gpu_type_normalized(raw, expected):
    assert normalize_gpu_type(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (2, {"count": 2}),
        ("A100", {"type": "A100", "count": 1}),
        ("A100:2", {"type": "A100", "count": 2}),
        ("A100:80GB:2", {"type": "A100", "memory": "80GB", "count": 2}),
        ("80GB:4", {"memory": "80GB", "count": 4}),
    ],
)
def test_gpu_shorthand(raw, expected):
    assert parse_gpu_shorthand(raw) == expected


@pytest.mark.parametrize("bad", ["", "A100::2", "a:b:c:d", "A100:H100:2", True])
def test_bad_gpu_shorthand(bad):
    with pytest.raises(ValueError):
        parse_gpu_shorthand(bad)
