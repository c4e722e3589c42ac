"""All sessions' media hubs on this node, with the node's viewer cap."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from server.relay.fanout import SessionRelay, StateListener
from server.relay.viewer import Viewer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Departed:
    """A viewer that has left, with what it had received: the evidence sampler writes its last
    span from this (media between its last sample and its leaving would be lost otherwise)."""

    session_id: int
    resource_id: str
    subject: str
    octets: int
    created_at: float  # monotonic
    left_at: float  # monotonic


# Departed viewers kept for the sampler (it drains them every interval).
MAX_DEPARTED = 100_000


class Relay:
    """Owns every ``SessionRelay`` of the process. ``close()`` is idempotent."""

    def __init__(
        self,
        *,
        max_viewers: int,
        on_state: StateListener,
        resource_prefix: str = "",
        behind_bytes: int = 0,
    ) -> None:
        self.max_viewers = max_viewers
        # A session's source queue over this refuses viewers (``overload``); 0: never.
        self.behind_bytes = behind_bytes
        # What this process's viewer resource ids start with (a worker's own, see workers.py).
        self.resource_prefix = resource_prefix
        self.departed: deque[Departed] = deque(maxlen=MAX_DEPARTED)
        self._on_state = on_state
        self.sessions: dict[int, SessionRelay] = {}
        self._joining = 0
        self._retired: dict[str, Any] = {
            "packets_out": {"audio": 0, "video": 0},
            "bytes_out": {"audio": 0, "video": 0},
            "nacks": 0,
            "retransmitted": 0,
            "plis_upstream": 0,
            "viewers_shed": 0,
            "viewers_refused_behind": 0,
        }
        self._closed = False

    def session(self, session_id: int, video_codec: str) -> SessionRelay:
        """The hub of a session, made on first use."""
        hub = self.sessions.get(session_id)
        if hub is None:
            hub = SessionRelay(
                session_id,
                video_codec,
                self._on_state,
                on_idle=self.prune,
                resource_prefix=self.resource_prefix,
                on_viewer_left=self._viewer_left,
                behind_bytes=self.behind_bytes,
            )
            self.sessions[session_id] = hub
        return hub

    def _viewer_left(self, session_id: int, viewer: Viewer) -> None:
        if not viewer.subject.startswith(("member:", "venue:")):
            return  # only members and venue screens are evidence
        self.departed.append(
            Departed(
                session_id,
                viewer.resource_id,
                viewer.subject,
                sum(s.octets for s in viewer.streams.values()),
                viewer.created_at,
                time.monotonic(),
            )
        )

    @property
    def viewer_count(self) -> int:
        """Connected viewers plus those still negotiating."""
        return sum(len(s.viewers) for s in self.sessions.values()) + self._joining

    def reserve_viewer(self) -> bool:
        """Take a place for a viewer about to negotiate; False when the node is full. Every
        True must be matched by ``release_viewer()`` once the viewer is added or has failed."""
        if self.viewer_count >= self.max_viewers:
            return False
        self._joining += 1
        return True

    def release_viewer(self) -> None:
        self._joining -= 1

    def prune(self, session_id: int) -> None:
        """Forget a hub nobody uses (no broadcaster, no viewers), keeping its counters."""
        hub = self.sessions.get(session_id)
        if hub is None or not hub.idle:
            return
        del self.sessions[session_id]
        for kind in self._retired["packets_out"]:
            self._retired["packets_out"][kind] += hub.packets_out[kind]
            self._retired["bytes_out"][kind] += hub.bytes_out[kind]
        feedback = hub.feedback_totals()
        self._retired["nacks"] += feedback["nacks"]
        self._retired["retransmitted"] += feedback["retransmitted"]
        self._retired["plis_upstream"] += hub.keyframes.sent
        self._retired["viewers_shed"] += hub.overload.shed
        self._retired["viewers_refused_behind"] += hub.overload.refused

    async def end_session(self, session_id: int) -> None:
        hub = self.sessions.get(session_id)
        if hub is not None:
            await hub.end()
            self.prune(session_id)

    def totals(self) -> dict[str, Any]:
        """Node-wide counters for metrics."""
        viewers: dict[str, int] = {}
        retired = self._retired
        packets = dict(retired["packets_out"])
        octets = dict(retired["bytes_out"])
        nacks, plis, retransmitted = (
            retired["nacks"],
            retired["plis_upstream"],
            retired["retransmitted"],
        )
        broadcasters = 0
        shed, refused = retired["viewers_shed"], retired["viewers_refused_behind"]
        for hub in self.sessions.values():
            shed += hub.overload.shed
            refused += hub.overload.refused
            for v in hub.viewers.values():
                viewers[v.kind] = viewers.get(v.kind, 0) + 1
            feedback = hub.feedback_totals()
            nacks += feedback["nacks"]
            retransmitted += feedback["retransmitted"]
            for kind in packets:
                packets[kind] += hub.packets_out[kind]
                octets[kind] += hub.bytes_out[kind]
            plis += hub.keyframes.sent
            broadcasters += hub.ingest is not None
        return {
            "sessions": len(self.sessions),
            "broadcasters": broadcasters,
            "viewers": viewers,
            "packets_out": packets,
            "bytes_out": octets,
            "nacks": nacks,
            "retransmitted": retransmitted,
            "plis_upstream": plis,
            "viewers_shed": shed,
            "viewers_refused_behind": refused,
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(s.close() for s in self.sessions.values()), return_exceptions=True)
        self.sessions.clear()
