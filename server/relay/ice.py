"""Which addresses our WebRTC peers offer as ICE host candidates, and no outside STUN.

aioice gathers every interface address except 127.0.0.1; operators need to choose (the address
people reach, or loopback in tests, benchmarks and the load tool). aioice offers no per-connection
setting, so ``advertise_addresses`` replaces its address lookup for the whole process: every peer
in a relay process or a load-tool process belongs to us.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aioice.ice
from aiortc import RTCConfiguration

from server.addresses import check_addresses

_original: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses

__all__ = ["advertise_addresses", "check_addresses", "rtc_configuration"]


def advertise_addresses(addresses: Sequence[str] | None) -> None:
    """Offer exactly ``addresses`` as host candidates (None: aioice's own choice again)."""
    if addresses is None:
        aioice.ice.get_host_addresses = _original  # type: ignore[assignment]
        return
    chosen = check_addresses(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv4 and ":" not in a) or (use_ipv6 and ":" in a)]

    aioice.ice.get_host_addresses = host_addresses


def rtc_configuration() -> RTCConfiguration:
    """Peer configuration: no ICE servers (aiortc's default would ask a public STUN server)."""
    return RTCConfiguration(iceServers=[])
