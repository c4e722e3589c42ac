"""Group commit for event batches: concurrent requests share one write transaction.

Every batch must be judged with the attendance chain locked, so batches are written one after
another anyway; what costs is the commit (an fsync on SQLite) per request. Requests queue their
batch here and one writer task takes everything waiting, judges the batches in order in one
transaction and commits once. If that transaction fails, each batch of the group is retried in
a transaction of its own, so one bad batch never takes the others down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

from attendance.clock import Clock
from attendance.events import Batch
from attendance.ingest import BatchJob, BatchReport, Sender, ingest_batches
from attendance.store import Store

log = logging.getLogger(__name__)

MAX_GROUP = 128
# Events judged in one transaction at most (bounds the IN lists and the transaction's length).
MAX_GROUP_EVENTS = 5000


@dataclass
class _Job:
    session_id: int
    sender: Sender
    batch: Batch
    done: asyncio.Future[BatchReport] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class IngestQueue:
    """``await queue.submit(...)`` gives the batch's report once it is committed."""

    def __init__(self, store: Store, clock: Clock, secret: str) -> None:
        self._store = store
        self._clock = clock
        self._secret = secret
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.groups = 0
        self.batches = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def submit(self, session_id: int, sender: Sender, batch: Batch) -> BatchReport:
        if self._task is None or self._task.done():
            raise RuntimeError("the ingest queue is not running")
        job = _Job(session_id, sender, batch)
        self._jobs.append(job)
        self._wake.set()
        return await job.done

    async def _run(self) -> None:
        while True:
            if not self._jobs:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            group = [self._jobs.popleft()]
            events = len(group[0].batch.events)
            while self._jobs and len(group) < MAX_GROUP:
                if events + len(self._jobs[0].batch.events) > MAX_GROUP_EVENTS:
                    break
                group.append(self._jobs.popleft())
                events += len(group[-1].batch.events)
            await self._write(group)

    async def _write(self, group: list[_Job]) -> None:
        now = self._clock()
        try:
            async with self._store.write() as db:
                reports = await ingest_batches(
                    db,
                    [BatchJob(j.session_id, j.sender, j.batch) for j in group],
                    now=now,
                    secret=self._secret,
                )
        except Exception as exc:
            if len(group) == 1:
                if not group[0].done.done():
                    group[0].done.set_exception(exc)
                return
            # One batch spoiled the group: each on its own, so only it fails.
            for job in group:
                await self._write([job])
            return
        self.groups += 1
        self.batches += len(group)
        for job, report in zip(group, reports, strict=True):
            if not job.done.done():
                job.done.set_result(report)

    async def close(self) -> None:
        """Finish what is queued, then stop; idempotent."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
