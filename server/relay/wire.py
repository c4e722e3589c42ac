"""A viewer's media straight onto its socket: SRTP-protected and sent in one synchronous call.

aiortc sends an RTP packet through five coroutines (the DTLS transport's ``_send_rtp``, the ICE
transport, aioice's ``Connection.send`` and ``sendto``, its protocol's ``send_data``) and then
asyncio's datagram transport. A relay does that once per packet per viewer, and at a few
hundred viewers those frames cost more CPU than the encryption and the system call together
(``bench/RESULTS.md``, 2026-12-07). ``Wire`` keeps what that chain ends in: the DTLS
transport's SRTP session, the nominated ICE pair's socket and address; ``send`` is then
``sock.sendto(srtp.protect(packet), addr)``.

It is valid only while the DTLS transport is connected and ICE keeps the same nominated pair:
``usable()`` checks both before every packet (and follows a new pair), and when it says no the
caller takes aiortc's own path, which raises ``ConnectionError`` as before. Relies on aiortc
1.16.0 and aioice 0.13.0 internals (pinned exactly); ``check_internals`` fails loudly at the
first viewer if they moved.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from aiortc.rtcdtlstransport import RTCDtlsTransport, State

RTP_COMPONENT = 1


class AiortcChanged(RuntimeError):
    """The aiortc or aioice internals the relay sends through are not where they were."""


def check_internals(dtls: RTCDtlsTransport) -> None:
    """Raise ``AiortcChanged`` unless ``dtls`` has what ``Wire`` reads (before it connects)."""
    ice = getattr(dtls, "transport", None)
    missing = [
        name
        for name, found in (
            ("RTCDtlsTransport._state", hasattr(dtls, "_state")),
            ("RTCDtlsTransport._tx_srtp", hasattr(dtls, "_tx_srtp")),
            ("RTCIceTransport._connection", hasattr(ice, "_connection")),
            (
                "aioice Connection._nominated",
                isinstance(getattr(getattr(ice, "_connection", None), "_nominated", None), dict),
            ),
        )
        if not found
    ]
    if missing:
        raise AiortcChanged(f"the relay sends through {', '.join(missing)}, which is gone")


class Wire:
    """Sends protected RTP for one DTLS transport (one viewer, or one kind without BUNDLE)."""

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        check_internals(dtls)
        self.dtls = dtls
        self._nominated: dict[int, Any] = dtls.transport._connection._nominated
        self._pair: Any = None
        self._sendto: Callable[[bytes, tuple[str, int]], int] | None = None
        self._protect: Callable[[bytes], bytes] | None = None
        self._addr: tuple[str, int] = ("", 0)
        self.dropped = 0  # packets the socket's full send buffer refused (UDP: gone)

    def usable(self) -> bool:
        """Whether ``send`` may be called now: DTLS connected, an ICE pair nominated."""
        if self.dtls._state is not State.CONNECTED:
            return False
        pair = self._nominated.get(RTP_COMPONENT)
        if pair is None:
            return False
        if pair is not self._pair:
            return self._bind(pair)
        return True

    def _bind(self, pair: Any) -> bool:
        transport = getattr(pair.protocol, "transport", None)
        sock = getattr(transport, "_sock", None)
        if not isinstance(sock, socket.socket) or transport is None or transport.is_closing():
            return False
        srtp = getattr(self.dtls, "_tx_srtp", None)  # None until the handshake ends
        if srtp is None:
            return False
        self._pair, self._sendto, self._addr = pair, sock.sendto, pair.remote_addr
        self._protect = srtp.protect
        return True

    def send(self, packet: bytes) -> bool:
        """Protect and send one RTP packet (after ``usable()``); False if the socket refused."""
        assert self._sendto is not None and self._protect is not None
        try:
            self._sendto(self._protect(packet), self._addr)
        except BlockingIOError:
            self.dropped += 1
            return False
        except OSError:
            return False
        return True
