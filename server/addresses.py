"""IP address literals for ICE host candidates, checked without loading the media stack (so the
command line validates its options before importing aiortc and PyAV)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from attendance.errors import InvalidInput


def check_addresses(addresses: Sequence[str]) -> list[str]:
    """Validate IP address literals (ICE host candidates cannot be names)."""
    checked = []
    for raw in addresses:
        try:
            checked.append(str(ipaddress.ip_address(raw.strip())))
        except ValueError:
            raise InvalidInput(f"ICE address {raw!r} is not an IP address") from None
    return checked
