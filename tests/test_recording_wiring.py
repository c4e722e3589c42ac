"""The server records every broadcast of a session whose recording switch is on: a WHIP
publish through the app leaves a catalogued, playable segment once the session ends."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import av
from relay_support import relay_stage, wait_for
from sqlalchemy import select, update

from attendance.models import Recording, StudySession
from attendance.store import Store


async def _recordings(store: Store) -> list[Recording]:
    async with store.read() as db:
        return list(await db.scalars(select(Recording).order_by(Recording.id)))


async def test_a_broadcast_is_recorded_and_catalogued(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        csrf = await stage.log_in_organiser()
        publication = await stage.publish()
        await wait_for(lambda: stage.hub.state == "live", 10, "live")
        await asyncio.sleep(3)
        r = await stage.client.post(
            f"/api/sessions/{stage.session_id}/end", headers={"X-CSRF-Token": csrf}
        )
        assert r.status == 200, await r.text()
        await publication.pc.close()
    # The app has shut down: every file is closed and every row written.
    (row,) = await _recordings(store)
    assert (row.session_id, row.segment_index, row.container, row.video_codec) == (
        stage.session_id,
        0,
        "webm",
        "vp8",
    )
    assert row.ended_at is not None and row.duration_s is not None and row.duration_s > 1.5
    path = tmp_path / "data" / row.path
    assert path.stat().st_size == row.size_bytes
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 30


async def test_the_recording_switch_is_honoured(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        async with store.write() as db:
            await db.execute(
                update(StudySession)
                .where(StudySession.id == stage.session_id)
                .values(recording_enabled=False)
            )
        publication = await stage.publish()
        await wait_for(lambda: stage.hub.state == "live", 10, "live")
        await asyncio.sleep(1.5)
        await publication.pc.close()
    assert await _recordings(store) == []
    assert not (tmp_path / "data" / "recordings").exists() or not any(
        (tmp_path / "data" / "recordings").rglob("*.webm")
    )
