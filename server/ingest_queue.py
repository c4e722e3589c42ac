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
from dataclasses import dataclass, field

from attendance.clock import Clock
from attendance.events import Batch
from attendance.ingest import BatchReport, Sender, ingest_batch
from attendance.store import Store

log = logging.getLogger(__name__)

MAX_GROUP = 128


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
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.groups = 0
        self.batches = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def submit(self, session_id: int, sender: Sender, batch: Batch) -> BatchReport:
        if self._task is None or self._task.done():
            raise RuntimeError("the ingest queue is not running")
        job = _Job(session_id, sender, batch)
        self._jobs.put_nowait(job)
        return await job.done

    async def _run(self) -> None:
        while True:
            first = await self._jobs.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP and not self._jobs.empty():
                job = self._jobs.get_nowait()
                if job is None:
                    self._jobs.put_nowait(None)  # stop after this group
                    break
                group.append(job)
            await self._write(group)

    async def _write(self, group: list[_Job]) -> None:
        now = self._clock()
        try:
            reports = []
            async with self._store.write() as db:
                for job in group:
                    reports.append(
                        await ingest_batch(
                            db,
                            session_id=job.session_id,
                            sender=job.sender,
                            batch=job.batch,
                            now=now,
                            secret=self._secret,
                        )
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
        self._jobs.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
