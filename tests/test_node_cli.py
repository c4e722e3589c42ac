"""``studycast node token`` and ``node list`` on a real SQLite store: a token names the edge and
verifies as a node token for any session, a bad name is refused, issuing one is in the admin
trail, and the list shows what nodes reported."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from server.tokens import NODE_SESSION, TokenRole, verify

SECRET = "n" * 40


def studycast(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from server.cli import main; main()"]
    return subprocess.run(
        [*command, "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STUDYCAST_SECRET_KEY": SECRET},
    )


def test_a_node_token_names_its_edge_and_is_logged(tmp_path: Path) -> None:
    done = studycast(tmp_path, "node", "token", "edge-sh", "--days", "30")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    now = datetime.now(UTC)
    claims = verify(SECRET, token, session_id=7, roles=frozenset({TokenRole.NODE}), now=now)
    assert (claims.role, claims.subject, claims.session_id) == (
        TokenRole.NODE,
        "node:edge-sh",
        NODE_SESSION,
    )
    assert 29 <= (claims.expires_at - now).days <= 30
    db = sqlite3.connect(tmp_path / "studycast.db")
    try:
        trail = db.execute(
            "SELECT action, target FROM admin_events WHERE action = 'node_token_issued'"
        ).fetchall()
    finally:
        db.close()
    assert trail == [("node_token_issued", "node:edge-sh")]

    for bad in ("上海", "_edge", "a" * 65, "edge sh"):
        refused = studycast(tmp_path, "node", "token", "--", bad)
        assert refused.returncode == 2, bad
        assert "Invalid value for NAME" in refused.stderr, refused.stderr
    assert studycast(tmp_path, "node", "token", "x", "--days", "0").returncode == 2


def test_node_list_shows_what_nodes_reported(tmp_path: Path) -> None:
    empty = studycast(tmp_path, "node", "list")
    assert (empty.returncode, empty.stdout.strip()) == (0, "no node has reported yet")
    db = sqlite3.connect(tmp_path / "studycast.db")
    try:
        seen = datetime.now(UTC).isoformat()
        status = {"sessions": {}, "viewers": 12, "cpu": 0.25, "max_viewers": 500}
        db.execute(
            "INSERT INTO nodes (name, role, url, pid, started_at, seen_at, status) "
            "VALUES ('edge-sh', 'edge', 'http://sh.example:8080', 99, ?, ?, ?)",
            (seen, seen, json.dumps(status)),
        )
        lagging = {**status, "viewers": 3, "loop_lag_max_s": 0.42}
        db.execute(
            "INSERT INTO nodes (name, role, url, pid, started_at, seen_at, status) "
            "VALUES ('origin', 'origin', 'http://bj.example:8080', 98, ?, ?, ?)",
            (seen, seen, json.dumps(lagging)),
        )
        db.commit()
    finally:
        db.close()
    listed = studycast(tmp_path, "node", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    origin, node = json.loads(listed.stdout)
    assert (origin["name"], origin["loop_lag_max_s"]) == ("origin", 0.42)
    assert (node["name"], node["role"], node["online"], node["viewers"]) == (
        "edge-sh",
        "edge",
        True,
        12,
    )
    table = studycast(tmp_path, "node", "list").stdout.splitlines()
    assert "lag 0.42 s" in table[0] and "http://bj.example:8080" in table[0]
    assert "edge-sh" in table[1] and "online" in table[1] and "lag -" in table[1]
    assert "http://sh.example:8080" in table[1]
