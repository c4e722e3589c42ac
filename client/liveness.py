"""Pure: what a viewer's connection is doing, from what happened and when.

``Liveness`` is fed with connection events (offered, connected, failed, media) and the session's
state from its event stream, and gives a ``Verdict``: connecting, playing, waiting for a paused
broadcast, reconnect (with a reason) or ended. ``client.watch.Watcher`` acts on it.
"""

from __future__ import annotations

import enum

STALL_S = 5.0  # no media this long while the broadcast is live: the connection is lost
BLIND_STALL_S = 20.0  # the same when the session's state is unknown (shared viewer token)
PLAYING_GAP_S = 1.5  # media within this long counts as playing
CONNECT_WITHIN_S = 15.0  # ICE + DTLS
WAITING_STATES = frozenset({"scheduled", "paused"})


class Verdict(enum.StrEnum):
    CONNECTING = "connecting"
    PLAYING = "playing"
    WAITING = "waiting"
    RECONNECT = "reconnect"
    ENDED = "ended"


class Liveness:
    """Pure: from events with their times, whether the current connection is connecting,
    playing, waiting for a paused broadcast, must be replaced, or the session has ended.

    ``reason`` says why after a ``RECONNECT``. A connection is replaced when ICE fails or does
    not connect in time, when media stops for ``stall_s`` while the broadcast is live or the
    server is out of reach, for ``blind_stall_s`` when the session's state is unknown, and when
    the event stream comes back after a loss without media flowing (the server may have
    restarted and forgotten us).
    """

    def __init__(
        self,
        *,
        stall_s: float = STALL_S,
        blind_stall_s: float = BLIND_STALL_S,
        playing_gap_s: float = PLAYING_GAP_S,
        connect_within_s: float = CONNECT_WITHIN_S,
    ) -> None:
        self.stall_s = stall_s
        self.blind_stall_s = blind_stall_s
        self.playing_gap_s = playing_gap_s
        self.connect_within_s = connect_within_s
        self.reason = ""
        self.state: str | None = None  # the session's: scheduled, live, paused, ended
        self._state_since = 0.0
        self._stream_lost = False
        self._stream_back = False
        self._opened_at = 0.0
        self._connected_at: float | None = None
        self._failed = ""
        self._last_media: float | None = None

    # the connection
    def opened(self, now: float) -> None:
        """A new connection was offered and answered."""
        self._opened_at = now
        self._connected_at = None
        self._failed = ""
        self._last_media = None
        self._stream_back = False

    def connected(self, now: float) -> None:
        if self._connected_at is None:
            self._connected_at = now

    def failed(self, why: str) -> None:
        self._failed = why

    def media(self, now: float) -> None:
        self._last_media = now
        self._stream_back = False

    # the session, from its event stream
    def session_state(self, state: str, now: float) -> None:
        if self._stream_lost:
            self._stream_lost = False
            self._stream_back = True
        if state != self.state:
            self.state = state
            self._state_since = now

    def stream_lost(self) -> None:
        self._stream_lost = True

    def verdict(self, now: float) -> Verdict:
        if self.state == "ended":
            return Verdict.ENDED
        if self._failed:
            return self._reconnect(self._failed)
        if self._connected_at is None:
            if now - self._opened_at >= self.connect_within_s:
                return self._reconnect(f"not connected within {self.connect_within_s:g} s")
            return Verdict.CONNECTING
        if self._last_media is not None and now - self._last_media < self.playing_gap_s:
            return Verdict.PLAYING
        if self._stream_back:
            return self._reconnect("the server came back")
        quiet_since = max(self._connected_at, self._last_media or 0.0)
        if self.state == "live":
            quiet_since = max(quiet_since, self._state_since)
        silent = now - quiet_since
        if self._stream_lost:
            limit, why = self.stall_s, "the server is out of reach"
        elif self.state == "live":
            limit, why = self.stall_s, "no media although the broadcast is live"
        elif self.state in WAITING_STATES:
            return Verdict.WAITING
        else:
            limit, why = self.blind_stall_s, "no media"
        if silent >= limit:
            return self._reconnect(f"{why} ({silent:.0f} s)")
        return Verdict.WAITING

    def _reconnect(self, why: str) -> Verdict:
        self.reason = why
        return Verdict.RECONNECT
