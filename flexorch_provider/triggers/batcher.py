"""Batched status polls: every trigger in a triggerer process shares one :class:`StatusBatcher`,
so the jobs of one backend batch key (one Slurm cluster, one SSH host, the local machine) cost
a single ``backend.poll`` call per interval, however many tasks are deferred."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from flexorch_provider.backends.base import Backend, JobHandle, JobStatus
from flexorch_provider.exceptions import FlexorchError


@dataclass
class _Group:
    backend: Backend
    interval: float
    members: dict[str, JobHandle] = field(default_factory=dict)
    watchers: dict[str, int] = field(default_factory=dict)  # job id → how many watch it (a moved trigger's two copies)
    waiters: dict[str, list[asyncio.Future[JobStatus]]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    polls: int = 0


class StatusBatcher:
    """One poll loop per batch key; every watcher gets each round's result for its job."""

    def __init__(self) -> None:
        self._groups: dict[tuple[int, str], _Group] = {}

    def polls(self, key: str) -> int:
        return sum(g.polls for (loop, k), g in self._groups.items() if k == key)

    @contextlib.asynccontextmanager
    async def watch(self, backend: Backend, handle: JobHandle, interval: float) -> AsyncIterator[_Watch]:
        gkey = (id(asyncio.get_running_loop()), backend.batch_key(handle))
        group = self._groups.get(gkey)
        if group is None:
            group = self._groups[gkey] = _Group(backend=backend, interval=interval)
        group.interval = min(group.interval, interval)
        group.members[handle.job_id] = handle
        group.watchers[handle.job_id] = group.watchers.get(handle.job_id, 0) + 1
        if group.task is None or group.task.done():
            group.task = asyncio.get_running_loop().create_task(self._loop(gkey, group))
        watch = _Watch(group, handle.job_id)
        try:
            yield watch
        finally:
            left = group.watchers.get(handle.job_id, 1) - 1
            if left > 0:
                group.watchers[handle.job_id] = left
            else:
                group.watchers.pop(handle.job_id, None)
                group.members.pop(handle.job_id, None)
            mine = watch.pending
            if mine is not None and not mine.done():
                mine.cancel()
                with contextlib.suppress(ValueError):
                    group.waiters.get(handle.job_id, []).remove(mine)

    async def _loop(self, gkey: tuple[int, str], group: _Group) -> None:
        try:
            while group.members:
                handles = list(group.members.values())
                error: BaseException | None = None
                result: dict[str, JobStatus] = {}
                try:
                    result = await asyncio.to_thread(group.backend.poll, handles)
                except Exception as e:  # delivered to every watcher; each decides
                    error = e
                group.polls += 1
                for job_id in [h.job_id for h in handles]:
                    for fut in group.waiters.pop(job_id, []):
                        if fut.done():
                            continue
                        if error is not None:
                            fut.set_exception(error)
                        elif job_id in result:
                            fut.set_result(result[job_id])
                        else:
                            fut.set_exception(FlexorchError(f"the backend returned no status for job {job_id}"))
                await asyncio.sleep(group.interval)
        finally:
            if self._groups.get(gkey) is group and not group.members:
                del self._groups[gkey]


@dataclass
class _Watch:
    group: _Group
    job_id: str
    pending: asyncio.Future[JobStatus] | None = None

    async def next(self) -> JobStatus:
        fut: asyncio.Future[JobStatus] = asyncio.get_running_loop().create_future()
        self.pending = fut
        self.group.waiters.setdefault(self.job_id, []).append(fut)
        return await fut


BATCHER = StatusBatcher()
