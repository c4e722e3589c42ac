"""An ended session evaluated once more, when the last evidence of every node has landed.

Ending a session evaluates it at once (the organiser sees results straight away), but the media
delivered to viewers is written by each node at its next evidence round: a viewer who hangs up
just before the end, or whom the end disconnects, has its last seconds recorded up to
``evidence_interval_s`` later, by the origin or by the edge it watched on. Until then the stored
results miss those seconds while the live attendance view already counts them. ``LateEvidence``
evaluates the session again (``finalize_session`` replaces the stored results and settles the
points) once that interval and a margin have passed. If this process stops first, the results
of the end stay as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from attendance.clock import Clock
from attendance.errors import StudycastError
from attendance.evaluation import finalize_session
from attendance.store import Store

log = logging.getLogger(__name__)

MARGIN_S = 2.0  # beyond the evidence interval: a node's write of its round, clocks


class LateEvidence:
    """Evaluates ended sessions again after ``delay_s``; ``close()`` drops what is pending."""

    def __init__(self, store: Store, clock: Clock, delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError(f"the delay is not negative: {delay_s!r}")
        self._store = store
        self._clock = clock
        self.delay_s = delay_s
        self._pending: dict[int, asyncio.Task[None]] = {}
        self.evaluated: list[int] = []  # sessions evaluated again, in order (for operators' logs)

    def after_end(self, session_id: int) -> None:
        """Evaluate ``session_id`` again once its late evidence is in (once, however often
        asked before then)."""
        if session_id not in self._pending:
            self._pending[session_id] = asyncio.get_running_loop().create_task(
                self._again(session_id), name=f"late-evidence-{session_id}"
            )

    async def _again(self, session_id: int) -> None:
        try:
            await asyncio.sleep(self.delay_s)
            async with self._store.write() as db:
                await finalize_session(db, session_id, now=self._clock())
            self.evaluated.append(session_id)
            log.info("session %s evaluated again with its late evidence", session_id)
        except StudycastError as exc:
            log.warning("session %s: not evaluated again: %s", session_id, exc.detail)
        finally:
            self._pending.pop(session_id, None)

    async def close(self) -> None:
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


LATE_EVIDENCE = web.AppKey("studycast.late_evidence", LateEvidence)
