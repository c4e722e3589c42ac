from attendance.models import OrgUnit
from attendance.store import Store
from attendance.units import UnitTree, list_units


async def test_units(store: Store, now) -> None:
    async with store.write() as db:
        tree = UnitTree(db, now)
        u = await tree.ensure(("北京", "朝阳", "第2会议室"))
        assert u.depth == 3
    async with store.read() as db:
        units = await list_units(db)
    assert [x.path for x in units] == ["北京", "北京/朝阳", "北京/朝阳/第2会议室"]
    async with store.read() as db:
        got = await db.get(OrgUnit, u.id)
        assert got is not None and got.created_at == now
