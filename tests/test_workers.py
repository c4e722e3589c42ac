"""The worker plan of ``serve --workers N``: which worker owns a WHEP resource, the plan and the
settings passed to a worker through its environment, and the default number of workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import Settings
from server.workers import WorkerPlan, default_workers, settings_env


def test_a_resource_id_names_its_worker() -> None:
    plan = WorkerPlan(1, 8080, (4001, 4002, 4003))
    assert (plan.count, plan.prefix, plan.private_url(2)) == (3, "w1-", "http://127.0.0.1:4003")
    ids = ["w0-abc", "w2-x-y", "w3-abc", "wx-abc", "abc", "w-1", "W1-abc", "w1"]
    assert [plan.owner_of(i) for i in ids] == [0, 2, None, None, None, None, None, None]


def test_the_plan_and_the_settings_travel_through_the_environment(tmp_path: Path) -> None:
    plan = WorkerPlan(2, 8123, (5001, 5002, 5003))
    assert WorkerPlan.from_env({"STUDYCAST_WORKER_PLAN": plan.to_env()}) == plan
    assert WorkerPlan.from_env({}) is None
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        database_url="postgresql://127.0.0.1:5432/x",
        ice_addresses=["127.0.0.1", "192.0.2.1"],
        max_viewers=42,
    )
    env = settings_env(settings)
    assert env["STUDYCAST_ICE_ADDRESSES"] == "127.0.0.1,192.0.2.1"
    assert "STUDYCAST_ORIGIN_URL" not in env  # unset settings are not passed
    again = Settings(
        _env_file=None, **{k.removeprefix("STUDYCAST_").lower(): v for k, v in env.items()}
    )
    assert again.model_dump() == settings.model_dump()


def test_one_process_on_sqlite_every_core_on_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert default_workers(Settings(_env_file=None, data_dir=tmp_path)) == 1
    pg = Settings(_env_file=None, data_dir=tmp_path, database_url="postgresql://h/db")
    assert default_workers(pg) == 6


def test_more_than_one_worker_needs_postgresql(tmp_path: Path) -> None:
    import subprocess
    import sys

    studycast = [sys.executable, "-c", "from server.cli import main; main()"]
    done = subprocess.run(
        [*studycast, "--data-dir", str(tmp_path), "serve", "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 2, done.stderr
    assert "--workers above 1 needs PostgreSQL" in done.stderr
