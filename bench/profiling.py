"""Optional py-spy profiles of a relay during a benchmark window, summarised by function."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from children import CHILDREN, REPO, BenchError, Children, child_env, tail


def start_profiler(directory: str, tag: str, pid: int, seconds: float) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=str(REPO / ".venv" / "bin")) or shutil.which("py-spy")
    if spy is None:
        raise BenchError("--profile-dir needs py-spy (.venv/bin/pip install py-spy)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", "100", "--nonblocking", "--format", "raw", "-o", str(out / f"{tag}.txt")]
    return CHILDREN.start(argv, env=child_env(), cwd=out, log=out / f"{tag}.py-spy.log")


def finish_profiler(proc: subprocess.Popen[bytes], directory: str, tag: str) -> dict[str, Any]:
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        Children.stop(proc)
    path = Path(directory) / f"{tag}.txt"
    if not path.exists():
        return {"error": tail(Path(directory) / f"{tag}.py-spy.log", 5)}
    return summarise_stacks(path.read_text(errors="replace"))


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    where = match["file"]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{match['fn']} ({where})"


def summarise_stacks(text: str, top: int = 25) -> dict[str, Any]:
    """Collapsed stacks (py-spy --format raw) → self and inclusive shares per function."""
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        total += n
        self_count[frames[-1]] += n
        for name in set(frames):
            incl[name] += n
    return {
        "samples": total,
        "self": [(n, round(100 * c / total, 1)) for n, c in self_count.most_common(top)]
        if total
        else [],
        "inclusive": [(n, round(100 * c / total, 1)) for n, c in incl.most_common(top * 2)]
        if total
        else [],
    }
