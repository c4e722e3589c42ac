"""The media plane: WHIP ingest, encoded-media fan-out to WHEP viewers, PLI/NACK handling.

``Relay`` owns one ``SessionRelay`` per live session; ``advertise_addresses`` and
``rtc_configuration`` set up every peer of a process (ICE host candidates, no STUN).
"""

from server.relay.fanout import SessionRelay
from server.relay.ice import advertise_addresses, rtc_configuration
from server.relay.relay import Relay

__all__ = ["Relay", "SessionRelay", "advertise_addresses", "rtc_configuration"]
