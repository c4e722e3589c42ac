"""An ended session evaluated once more, when the last evidence of every node has landed.

Ending a session evaluates it at once (the organiser sees results straight away), but the media
delivered to viewers is written by each node at its next evidence round: a viewer who hangs up
just before the end, or whom the end disconnects, has its last seconds recorded up to
``evidence_interval_s`` later, by the origin or by the edge it watched on. Until then the stored
results miss those seconds while the live attendance view already counts them. ``LateEvidence``
evaluates the session again (``finalize_session`` replaces the stored results and settles the
points) once that interval and a margin have passed.

Two ways lead there. The node whose API ended the session asks for it (``after_end``), to the
second. And the origin sweeps the record every ``sweep_every_s`` for sessions ended in the last
two days whose results are older than their late evidence (``sweep``): a session ended with
``studycast session end``, or by a node that stopped before its evaluation was due, is
evaluated again by the running origin within a sweep of being due.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from datetime import timedelta

from aiohttp import web

from attendance.clock import Clock
from attendance.errors import StudycastError
from attendance.evaluation import evaluated_too_early, finalize_session
from attendance.store import Store

log = logging.getLogger(__name__)

MARGIN_S = 2.0  # beyond the evidence interval: a node's write of its round, clocks
SWEEP_EVERY_S = 30.0
SWEEP_HORIZON = timedelta(days=2)  # older ended sessions are left as they are


class LateEvidence:
    """Evaluates ended sessions again after ``delay_s``; ``close()`` drops what is pending."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        delay_s: float,
        *,
        sweep_every_s: float = SWEEP_EVERY_S,
        horizon: timedelta = SWEEP_HORIZON,
    ) -> None:
        if delay_s < 0:
            raise ValueError(f"the delay is not negative: {delay_s!r}")
        if sweep_every_s <= 0:
            raise ValueError(f"the sweep interval is positive: {sweep_every_s!r}")
        self._store = store
        self._clock = clock
        self.delay_s = delay_s
        self.sweep_every_s = sweep_every_s
        self.horizon = horizon
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._refused: set[int] = set()  # the record refused them (evidence pruned): not again
        self._sweeper: asyncio.Task[None] | None = None
        # The last sessions evaluated again, in order (for operators' logs).
        self.evaluated: collections.deque[int] = collections.deque(maxlen=1000)

    def after_end(self, session_id: int) -> None:
        """Evaluate ``session_id`` again once its late evidence is in (once, however often
        asked before then)."""
        if session_id not in self._pending:
            self._pending[session_id] = asyncio.get_running_loop().create_task(
                self._again(session_id), name=f"late-evidence-{session_id}"
            )

    async def sweep(self) -> list[int]:
        """Evaluate again every session ended within ``horizon`` whose results were evaluated
        before its late evidence was in, once ``delay_s`` + ``sweep_every_s`` have passed since
        its end (so that a pending ``after_end`` goes first). Returns the sessions done."""
        now = self._clock()
        late = timedelta(seconds=self.delay_s)
        async with self._store.read() as db:
            due = await evaluated_too_early(
                db,
                late=late,
                ended_from=now - self.horizon,
                ended_until=now - late - timedelta(seconds=self.sweep_every_s),
            )
        done = []
        for session_id in due:
            if session_id in self._pending or session_id in self._refused:
                continue
            if await self._evaluate(session_id):
                done.append(session_id)
        return done

    def start_sweeping(self) -> None:
        """Sweep now and every ``sweep_every_s`` until ``close()`` (on one node: the origin)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="late-evidence-sweep"
            )

    @property
    def sweeping(self) -> bool:
        return self._sweeper is not None and not self._sweeper.done()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # the record out of reach: the next sweep tries again
                log.exception("late evidence sweep failed")
            await asyncio.sleep(self.sweep_every_s)

    async def _again(self, session_id: int) -> None:
        try:
            await asyncio.sleep(self.delay_s)
            await self._evaluate(session_id)
        finally:
            self._pending.pop(session_id, None)

    async def _evaluate(self, session_id: int) -> bool:
        try:
            async with self._store.write() as db:
                await finalize_session(db, session_id, now=self._clock())
        except StudycastError as exc:
            self._refused.add(session_id)
            log.warning("session %s: not evaluated again: %s", session_id, exc.detail)
            return False
        self.evaluated.append(session_id)
        log.info("session %s evaluated again with its late evidence", session_id)
        return True

    async def close(self) -> None:
        tasks = list(self._pending.values())
        if self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


LATE_EVIDENCE = web.AppKey("studycast.late_evidence", LateEvidence)
