"""Doing one thing on many hosts at once, and saying briefly what went wrong on each."""

from __future__ import annotations

from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

H = TypeVar("H")


def parallel(items: Collection[H], fn: Callable[[H], Any]) -> list[tuple[H, Any, Exception | None]]:
    """``fn`` on every item at once (threads; none for a single item): (item, result, error) in order."""
    if len(items) <= 1:
        out: list[tuple[H, Any, Exception | None]] = []
        for item in items:
            try:
                out.append((item, fn(item), None))
            except Exception as e:
                out.append((item, None, e))
        return out
    with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
        futures = [(item, pool.submit(fn, item)) for item in items]
        results: list[tuple[H, Any, Exception | None]] = []
        for item, fut in futures:
            try:
                results.append((item, fut.result(), None))
            except Exception as e:
                results.append((item, None, e))
        return results


def reason(e: BaseException) -> str:
    """The first line of an error, for messages that list many."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
