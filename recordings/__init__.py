"""Server-side recording: the relay's encoded media remuxed into one file per broadcaster
connection, catalogued per session."""

from recordings.catalogue import PlaylistEntry, playlist, recover
from recordings.events import RecordingEvent, SegmentClosed, SegmentOpened
from recordings.recorder import Recordings, SegmentWriter, SessionRecorder
from recordings.remux import FileFacts, RemuxError, SegmentFile, inspect_file

__all__ = [
    "FileFacts",
    "PlaylistEntry",
    "RecordingEvent",
    "Recordings",
    "RemuxError",
    "SegmentClosed",
    "SegmentFile",
    "SegmentOpened",
    "SegmentWriter",
    "SessionRecorder",
    "inspect_file",
    "playlist",
    "recover",
]
