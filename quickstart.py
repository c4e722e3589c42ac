#!/usr/bin/env python3
"""Set studycast up in ./.venv and run it: the two quick-start commands of README.md.

    python3 quickstart.py serve [ARGS...]   # set up, then: studycast serve --demo ARGS...
    python3 quickstart.py test [ARGS...]    # set up, then: python -m pytest ARGS...

Only the standard library is used, so this runs on a fresh clone with nothing but Python 3.11+.
Setting up means: create .venv if it is missing (or broken), then upgrade pip and run
``pip install -e '.[dev]'`` unless a stamp inside .venv shows that this exact pyproject.toml is
already installed there. A second run therefore starts at once.

This file is kept runnable up to the version check by old Pythons (3.6+): no
``from __future__ import annotations``, no syntax newer than 3.6, and function annotations quoted,
so that someone with too old a Python gets a clear message rather than a SyntaxError.
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

MIN_PYTHON = (3, 11)
# Bump when the install steps change, so that existing .venvs get set up again.
STAMP_FORMAT = "1"
STAMP_NAME = ".studycast-quickstart-stamp"
WINDOWS = os.name == "nt"

USAGE = """\
usage: python3 quickstart.py serve [ARGS...]
       python3 quickstart.py test [ARGS...]

  serve  set up .venv, then run `studycast serve --demo ARGS...`: an embedded SQLite store
         under ./data with a demo session; prints the URLs to open and the demo logins
  test   set up .venv, then run the test suite: `python -m pytest ARGS...`

Setting up creates .venv if needed and installs the project with `pip install -e '.[dev]'`,
skipped when pyproject.toml has not changed since the last install.
"""


def say(message: str) -> None:
    print("quickstart: " + message, flush=True)


def fail(message: str) -> None:
    print("quickstart: error: " + message, file=sys.stderr, flush=True)


def check_python() -> bool:
    if sys.version_info >= MIN_PYTHON:
        return True
    have = ".".join(str(n) for n in sys.version_info[:3])
    need = ".".join(str(n) for n in MIN_PYTHON)
    fail(
        "studycast needs Python "
        + need
        + " or newer, but this is Python "
        + have
        + " ("
        + (sys.executable or "python")
        + ").\n"
        "Install Python " + need + "+ (python.org, your package manager, or pyenv) and run "
        "this again with it, e.g.: python" + need + " quickstart.py serve"
    )
    return False


def venv_bin(venv_dir: "Path") -> "Path":
    return venv_dir / ("Scripts" if WINDOWS else "bin")


def venv_program(venv_dir: "Path", name: str) -> "Path":
    return venv_bin(venv_dir) / (name + ".exe" if WINDOWS else name)


def venv_python_version(python: "Path") -> "str | None":
    """The venv interpreter's version if it runs and is new enough, else None."""
    if not python.exists():
        return None
    probe = "import sys; print('%d.%d.%d' % sys.version_info[:3], sys.version_info >= (3, 11))"
    try:
        out = subprocess.run(
            [str(python), "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.stdout.split()
    if out.returncode != 0 or len(words) != 2 or words[1] != "True":
        return None
    return words[0]


def forget_other_checkout(root: "Path", venv_dir: "Path") -> None:
    """A .venv set up for another path (a moved or copied checkout) has stale scripts: drop it."""
    try:
        lines = (venv_dir / STAMP_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    if ("project " + str(root)) not in lines:
        say(".venv was set up for another location of this checkout: recreating it")
        shutil.rmtree(venv_dir)


def ensure_venv(venv_dir: "Path") -> "tuple[Path, str]":
    """Create .venv when missing or unusable; return its python and that python's version."""
    python = venv_program(venv_dir, "python")
    version = venv_python_version(python)
    if version is not None:
        return python, version
    if venv_dir.exists():
        say(".venv is unusable (moved, or made by a Python older than 3.11): recreating it")
        shutil.rmtree(venv_dir)
    say("creating .venv")
    import venv

    venv.EnvBuilder(with_pip=True).create(str(venv_dir))
    version = venv_python_version(python)
    if version is None:
        fail("the new .venv's python does not run: " + str(python))
        raise SystemExit(1)
    return python, version


def stamp_text(root: "Path", python_version: str) -> str:
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    return "\n".join(
        [
            "format " + STAMP_FORMAT,
            "pyproject.toml sha256 " + digest,
            "python " + python_version,
            "project " + str(root),
            "",
        ]
    )


def ensure_installed(root: "Path", venv_dir: "Path", python: "Path", version: str) -> None:
    """``pip install -e '.[dev]'`` unless the stamp says this pyproject.toml is installed."""
    stamp = venv_dir / STAMP_NAME
    wanted = stamp_text(root, version)
    try:
        current = stamp.read_text(encoding="utf-8")
    except OSError:
        current = ""
    if current == wanted and venv_program(venv_dir, "studycast").exists():
        say(".venv is up to date (pyproject.toml unchanged): skipping install")
        return
    say("installing studycast into .venv: pip install -e '.[dev]' (takes a minute or two)")
    with contextlib.suppress(OSError):
        stamp.unlink()
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    upgraded = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], env=env, check=False
    )
    if upgraded.returncode != 0:
        say("warning: upgrading pip failed; going on with the pip .venv has")
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-e", ".[dev]"], env=env, check=False
    )
    if installed.returncode != 0:
        fail("pip install -e '.[dev]' failed (see pip's messages above); nothing was started")
        raise SystemExit(installed.returncode)
    stamp.write_text(wanted, encoding="utf-8")
    say("install done")


@contextlib.contextmanager
def setup_lock(root: "Path") -> "Iterator[None]":
    """Keep two quickstart runs of one checkout from setting up .venv at the same time.

    The lock is taken on the checkout's directory itself, so no lock file is left behind.
    """
    if WINDOWS:
        yield
        return
    import fcntl

    fd = os.open(str(root), os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say("waiting for another quickstart run to finish setting up .venv")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def venv_environment(venv_dir: "Path") -> "dict[str, str]":
    """The environment of an activated .venv, so that `studycast` and friends are on PATH."""
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(venv_dir)
    env["PATH"] = str(venv_bin(venv_dir)) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONHOME", None)
    env.pop("__PYVENV_LAUNCHER__", None)
    return env


def run_last(cmd: "list[str]", env: "dict[str, str]") -> int:
    """Hand over to CMD: exec on POSIX (signals such as SIGTERM reach it directly)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if not WINDOWS:
        try:
            os.execve(cmd[0], cmd, env)  # noqa: S606 (fixed argv: our own venv program)
        except OSError as exc:
            fail("cannot run " + cmd[0] + ": " + str(exc))
            return 1
    try:
        return subprocess.run(cmd, env=env, check=False).returncode
    except KeyboardInterrupt:
        return 130


def main(argv: "list[str]") -> int:
    if not check_python():
        return 1
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in ("serve", "test"):
        print(USAGE, end="", file=sys.stderr)
        fail("unknown command " + repr(command) + ": use serve or test")
        return 2

    root = Path(__file__).resolve().parent
    os.chdir(root)
    venv_dir = root / ".venv"
    with setup_lock(root):
        forget_other_checkout(root, venv_dir)
        python, version = ensure_venv(venv_dir)
        ensure_installed(root, venv_dir, python, version)

    env = venv_environment(venv_dir)
    if command == "serve":
        cmd = [str(venv_program(venv_dir, "studycast")), "serve", "--demo", *rest]
    else:
        cmd = [str(python), "-m", "pytest", *rest]
    return run_last(cmd, env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
