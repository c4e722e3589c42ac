"""The audit API: the verification status of the hash-chained logs, checkpoints, public key."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
