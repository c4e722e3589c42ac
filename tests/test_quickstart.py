"""The two README commands, run from a fresh clone in a temporary directory, succeed.

The clone is of the committed HEAD of the repository holding this file (uncommitted work is not
in it, as on a newcomer's machine). Both commands are run the way README.md says, with the base
Python (not this venv's), from a directory other than the clone.

What ``studycast serve --demo`` is expected to print (the contract this test checks):

* a line containing ``studycast is running at http://HOST:PORT/`` once it accepts connections;
* on the run that seeds the empty store, lines with the demo logins, naming ``organiser`` and
  ``auditor`` (with their passwords);
* it answers ``GET /healthz`` with 200, and exits with status 0, without a traceback, within a
  few seconds of SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NESTED_ENV = "STUDYCAST_IN_QUICKSTART_TEST"
# Kept from the caller's environment; every other STUDYCAST_* variable is dropped.
KEEP_ENV = {"STUDYCAST_TEST_DATABASE_URL", "STUDYCAST_REQUIRE_SERVICES"}

FIRST_START_TIMEOUT = 480.0  # creates .venv and installs everything
AGAIN_START_TIMEOUT = 90.0  # nothing to install
LOGINS_TIMEOUT = 15.0
HEALTH_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
TEST_RUN_TIMEOUT = 900.0

DEMO_ROLES = ("organiser", "auditor")
RUNNING = re.compile(r"studycast is running at (http://[^\s/]+:(\d+)/)")


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _base_python() -> str:
    """The interpreter this venv was made from: what a newcomer's ``python3`` would be."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if Path(base).exists() else sys.executable


def _environment(data_dir: Path) -> dict[str, str]:
    """The caller's environment without this venv or any studycast setting, plus DATA_DIR."""
    venv_bin = str(Path(sys.prefix) / ("Scripts" if os.name == "nt" else "bin"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYCAST_") or k in KEEP_ENV}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    env["PYTHONUNBUFFERED"] = "1"
    env["STUDYCAST_DATA_DIR"] = str(data_dir)
    env[NESTED_ENV] = "1"
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Output:
    """Collects a process's combined output in a thread, so that waits on it are bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: list[str] = []
        self._done = False
        self._cond = threading.Condition()
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def wait_for(self, found: Callable[[list[str]], bool], timeout: float) -> bool:
        """Wait until FOUND(lines) holds (True), the output ends or TIMEOUT passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not found(self._lines):
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status = _get(url)
        except OSError as exc:
            last = repr(exc)
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.5)
    pytest.fail(f"GET {url} did not answer 200 within {HEALTH_TIMEOUT:.0f} s: {last}")


def _demo_counts(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("users", "study_sessions")
        }


def _login_line(role: str, lines: list[str]) -> bool:
    """A demo login: a line naming the role and giving its password."""
    return any(role in x.lower() and "password" in x.lower() for x in lines)


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clone of the committed HEAD, removed afterwards (its .venv is large)."""
    if os.environ.get(NESTED_ENV):
        pytest.skip("already inside a quickstart run (no recursion)")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    top = _git("rev-parse", "--show-toplevel", cwd=REPO)
    if top.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout")
    head = _git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=REPO)
    if head.returncode != 0:
        pytest.skip(f"{REPO} has no commits yet")
    base = tmp_path_factory.mktemp("fresh-clone")
    dest = base / "studycast"
    cloned = _git("clone", "--quiet", top.stdout.strip(), str(dest), cwd=base)
    assert cloned.returncode == 0, cloned.stderr
    checkout = _git("checkout", "--quiet", "--detach", head.stdout.strip(), cwd=dest)
    assert checkout.returncode == 0, checkout.stderr
    if not (dest / "quickstart.py").is_file():
        pytest.fail("quickstart.py is not in the committed HEAD: commit it to test the quick start")
    try:
        yield dest
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _serve(
    clone: Path, data_dir: Path, start_timeout: float, *, expect_logins: bool
) -> tuple[float, str]:
    """Run ``quickstart.py serve``, check it, SIGTERM it; return (seconds to start, output)."""
    port = _free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [_base_python(), str(clone / "quickstart.py"), "serve", "--port", str(port)],
        cwd=data_dir.parent,  # not the clone: quickstart.py must find its own directory
        env=_environment(data_dir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    out = Output(proc)
    try:
        running = out.wait_for(lambda lines: any(RUNNING.search(x) for x in lines), start_timeout)
        startup = time.monotonic() - started
        assert running, (
            f"no 'studycast is running at http://HOST:PORT/' line within {start_timeout:.0f} s "
            f"(exit status {proc.poll()}); output:\n{out.text}"
        )
        match = RUNNING.search(out.text)
        assert match is not None
        url, printed_port = match.group(1), int(match.group(2))
        assert printed_port == port, f"asked for --port {port}, got {url}"
        if expect_logins:
            logins = out.wait_for(
                lambda lines: all(_login_line(role, lines) for role in DEMO_ROLES), LOGINS_TIMEOUT
            )
            assert logins, f"no demo logins ('ROLE ... password') for {DEMO_ROLES}:\n{out.text}"
        _wait_healthy(url + "healthz")
        assert proc.poll() is None, f"serve exited early:\n{out.text}"

        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM:\n{out.text}")
        out.close()
        assert code == 0, f"serve exited with {code} after SIGTERM:\n{out.text}"
        assert "Traceback" not in out.text, out.text
        return startup, out.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        out.close()


@pytest.mark.skipif(os.name == "nt", reason="stops the server with SIGTERM")
def test_serve_command_from_fresh_clone(fresh_clone: Path) -> None:
    data_dir = fresh_clone.parent / "data"
    db = data_dir / "studycast.db"

    first_startup, first = _serve(fresh_clone, data_dir, FIRST_START_TIMEOUT, expect_logins=True)
    installed_first = "quickstart: installing" in first  # unless the other test ran first
    assert db.is_file(), f"serve --demo made no SQLite store at {db}:\n{first}"
    seeded = _demo_counts(db)
    assert seeded["users"] > 0 and seeded["study_sessions"] > 0, seeded

    # Again: no reinstall, no second demo, still starts (and sooner).
    again_startup, again = _serve(fresh_clone, data_dir, AGAIN_START_TIMEOUT, expect_logins=False)
    assert "quickstart: installing" not in again, again
    assert _demo_counts(db) == seeded, "the second run seeded the demo again"
    if installed_first:
        assert again_startup < first_startup, (again_startup, first_startup)


def test_test_command_from_fresh_clone(fresh_clone: Path) -> None:
    # A small subset: the full suite runs in CI anyway, and this file must not run itself.
    data_dir = fresh_clone.parent / "data-test"
    data_dir.mkdir(exist_ok=True)
    proc = subprocess.run(
        [
            _base_python(),
            str(fresh_clone / "quickstart.py"),
            "test",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "tests/test_store_smoke.py",
        ],
        cwd=data_dir,
        env=_environment(data_dir),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=TEST_RUN_TIMEOUT,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(r"\b\d+ passed\b", proc.stdout), output
