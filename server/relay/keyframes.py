"""Recognising the first RTP packet of a keyframe from its payload, without depacketising.

A viewer that joins (or follows a new broadcaster) is sent nothing of a video stream until such
a packet: delta frames before it would only show as corruption.
"""

from __future__ import annotations

H264_IDR = 5
H264_SPS = 7
H264_STAP_A = 24
H264_FU_A = 28


def vp8_keyframe_start(payload: bytes) -> bool:
    """RFC 7741: the start of partition 0 (S=1, PID=0) of a frame whose P bit is 0."""
    if len(payload) < 2:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # S bit, partition index
        return False
    pos = 1
    if first & 0x80:  # X: extension byte follows
        ext = payload[pos]
        pos += 1
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if pos >= len(payload):
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            pos += 1
    return pos < len(payload) and not payload[pos] & 0x01


def _starts_keyframe(nal: bytes) -> bool:
    """An SPS, or the first slice of an IDR picture (first_mb_in_slice = 0, coded as bit '1')."""
    nal_type = nal[0] & 0x1F
    if nal_type == H264_SPS:
        return True
    return nal_type == H264_IDR and len(nal) > 1 and bool(nal[1] & 0x80)


def h264_keyframe_start(payload: bytes) -> bool:
    """RFC 6184: a packet carrying an SPS, or the whole NAL or first fragment of the first slice
    of an IDR picture. (A keyframe's later slices do not start it.)"""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type == H264_STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            nal = payload[pos + 2 : pos + 2 + size]
            if nal and _starts_keyframe(nal):
                return True
            pos += 2 + size
        return False
    if nal_type == H264_FU_A:
        if len(payload) < 3 or not payload[1] & 0x80:  # S bit: the first fragment
            return False
        return _starts_keyframe(bytes([payload[1] & 0x1F, payload[2]]))
    return _starts_keyframe(payload)


def keyframe_start(codec_name: str, payload: bytes) -> bool:
    """Dispatch on the codec's SDP name (``VP8``, ``H264``); other codecs have no keyframes."""
    name = codec_name.upper()
    if name == "VP8":
        return vp8_keyframe_start(payload)
    if name == "H264":
        return h264_keyframe_start(payload)
    return False
