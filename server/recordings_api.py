"""The recordings API: the catalogue of a session's segments, playback with HTTP ranges,
chapter markers, and downloads of one segment or the whole session."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
