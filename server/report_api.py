"""The reports API: session reports, roll-ups by unit and venue, member history, exports."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
