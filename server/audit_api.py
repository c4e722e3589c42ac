"""The audit API: the verification status of the hash-chained logs, checkpoints, public key."""

from __future__ import annotations

import asyncio
import weakref

from aiohttp import web

from attendance.audit import ChainReport, make_checkpoint, public_key_pem, verify_chains
from attendance.models import Role
from attendance.store import Store
from server.auth import CLOCK, SETTINGS, STORE, current_user, require_role

routes = web.RouteTableDef()

# One verification per store at a time: callers arriving meanwhile share its result, so a
# reloading dashboard cannot pile up full scans of a big log.
_RUNNING: weakref.WeakKeyDictionary[Store, asyncio.Task[ChainReport]] = weakref.WeakKeyDictionary()


async def _shared_verification(request: web.Request) -> ChainReport:
    store = request.config_dict[STORE]
    task = _RUNNING.get(store)
    if task is None:
        task = asyncio.create_task(verify_chains(store, now=request.config_dict[CLOCK]()))
        _RUNNING[store] = task
        task.add_done_callback(lambda _t: _RUNNING.pop(store, None))
    # A caller that goes away must not cancel the scan the others are waiting for.
    return await asyncio.shield(task)


@routes.get("/api/audit/status")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def audit_status(request: web.Request) -> web.Response:
    """Recompute both chains now: {ok, chains: {attendance, admin}, checked_at}. On a big log
    this takes seconds (about 13 s per million events)."""
    report = await _shared_verification(request)
    return web.json_response(report.as_json())


@routes.get("/api/audit/public-key")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def audit_public_key(request: web.Request) -> web.Response:
    """The PEM public key that checks this server's checkpoints."""
    pem = public_key_pem(request.config_dict[SETTINGS])
    return web.Response(text=pem, content_type="text/plain")


@routes.post("/api/audit/checkpoints")
@require_role(Role.ORGANISER)
async def audit_checkpoint(request: web.Request) -> web.Response:
    """Verify both chains and return a signed checkpoint of them (logged in the admin trail)."""
    user = await current_user(request)
    made = await make_checkpoint(
        request.config_dict[STORE],
        request.config_dict[SETTINGS],
        now=request.config_dict[CLOCK](),
        actor=user.actor,
    )
    return web.json_response({"checkpoint": made.body(), "signature": made.signature}, status=201)
