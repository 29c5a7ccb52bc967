"""Shared readings: ten viewers cost one fetch, a slow source answers "still asking" without
holding the page, a failing one keeps its last good value beside the error."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flexorch_provider.ui.cache import Shared


def test_ten_viewers_at_once_share_one_fetch():
    shared = Shared(ttl=60, wait=5)
    calls = []

    def sweep():
        calls.append(1)
        time.sleep(0.3)
        return {"free": 3}

    with ThreadPoolExecutor(10) as pool:
        readings = list(pool.map(lambda _: shared.get("pool:lab", sweep), range(10)))
    assert len(calls) == 1 and shared.fetches == 1
    assert all(r.value == {"free": 3} and r.error is None for r in readings)
    assert shared.get("pool:lab", sweep).value == {"free": 3} and len(calls) == 1  # fresh: no second sweep


def test_a_slow_source_answers_at_once_and_its_answer_comes_later():
    shared = Shared(ttl=60, wait=0.2)
    release = threading.Event()

    def slow():
        release.wait(5)
        return "done"

    started = time.monotonic()
    r = shared.get("slow", slow)
    assert time.monotonic() - started < 2
    assert r.value is None and "still asking" in r.public()["slow"]
    assert shared.get("fast", lambda: "here").value == "here"  # the rest does not wait for it
    release.set()
    for _ in range(50):
        if shared.get("slow", slow).value == "done":
            break
        time.sleep(0.05)
    assert shared.get("slow", slow).value == "done" and shared.fetches == 2


def test_an_error_keeps_the_last_good_value_and_says_why():
    shared = Shared(ttl=0, wait=2)
    assert shared.get("k", lambda: 1).value == 1

    def dead():
        raise OSError("host gpu-2: connection refused\nmore detail")

    r = shared.get("k", dead)
    assert r.value == 1 and r.error == "host gpu-2: connection refused"
    assert r.public()["error"] == r.error and r.public()["age_s"] is not None


def test_readings_nobody_asks_for_are_forgotten(monkeypatch):
    from flexorch_provider.ui import cache

    shared = Shared(ttl=1, wait=2)
    for i in range(20):
        shared.get(f"poll:{i}", lambda i=i: i)
    assert len(shared._readings) == 20
    later = time.time() + cache.KEEP_S + 1
    monkeypatch.setattr(cache.time, "time", lambda: later)
    shared.get("poll:new", lambda: "x")
    assert set(shared._readings) == {"poll:new"}
