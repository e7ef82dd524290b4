"""Where the broker's time goes: py-spy sampling the broker during a measurement, summarized
as self time per function, per area (our modules, asyncio, aiosqlite, json, pydantic, ...) and
per thread. ``durable-tq bench --profile DIR`` keeps each raw profile in DIR."""

from __future__ import annotations

import linecache
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_RATE = 200
STOP_TIMEOUT = 30.0

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_THREAD = re.compile(r"^thread \((?P<tid>[^)]*)\)(?:: (?P<name>.*))?$")

#: (area, test on the leaf frame), the first that matches wins. Waits come first: py-spy's idle
#: filter does not see a thread blocked in epoll or a queue as idle when sampling nonblocking.
_AREAS: tuple[tuple[str, Callable[[Frame], bool]], ...] = (
    ("waiting: event loop idle in epoll", lambda f: f.file == "selectors.py"),
    (
        "waiting: DB thread idle (aiosqlite queue)",
        lambda f: f.function == "_connection_worker_thread",
    ),
    ("SQLite COMMIT (the fsync)", lambda f: '"COMMIT"' in f.source),
    (
        "SQLite statements (time in SQLite's C code)",
        lambda f: f.file.startswith("durable_tq/") and ".execute" in f.source,
    ),
    ("socket writes (send())", lambda f: f.function.endswith("Transport.write")),
    ("waking the event loop from another thread", lambda f: f.function.endswith("_write_to_self")),
    ("handing work to the DB thread (aiosqlite)", lambda f: f.file.startswith("aiosqlite/")),
    ("durable_tq server (framing, dispatch)", lambda f: f.file.endswith("server.py")),
    ("durable_tq protocol (decode/validate/encode)", lambda f: f.file.endswith("protocol.py")),
    ("durable_tq other Python", lambda f: f.file.startswith("durable_tq/")),
    ("pydantic", lambda f: "pydantic" in f.file),
    ("json", lambda f: f.file.startswith("json/")),
    ("anyio", lambda f: f.file.startswith("anyio/")),
    ("asyncio (event loop, sockets)", lambda f: f.file.startswith("asyncio/")),
)
_WAITING = "waiting"
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def py_spy() -> str | None:
    """The py-spy executable beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file():
        return str(beside)
    return shutil.which("py-spy")


class Recording:
    """``py-spy record --pid PID -f raw --threads`` until :meth:`stop`."""

    def __init__(self, pid: int, output: Path) -> None:
        executable = py_spy()
        if executable is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        self.output = output
        self._log = output.with_suffix(".log")
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [executable, "record", "--pid", str(pid), "--output", str(output),
                 "--format", "raw", "--threads", "--nonblocking", "--rate", str(SAMPLE_RATE)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def stop(self) -> Path | None:
        """End the recording (py-spy writes its file on SIGINT); the file, if it was written."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self.output if self.output.is_file() else None


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int | None

    @property
    def source(self) -> str:
        """The source line, for our own files (the profiled broker runs this same code)."""
        if self.line is None or not self.file.startswith("durable_tq/"):
            return ""
        return linecache.getline(str(_PACKAGE_ROOT / self.file), self.line).strip()

    @property
    def name(self) -> str:
        if self.file.startswith("durable_tq/") and self.line is not None:
            source = self.source
            shown = f"  `{source[:60]}`" if source else ""
            return f"{self.function} ({self.file}:{self.line}){shown}"
        return f"{self.function} ({self.file})"


def _parse_frame(text: str) -> Frame:
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "", None)
    line = match["line"]
    return Frame(match["function"], match["file"], int(line) if line else None)


def area_of(frame: Frame) -> str:
    for area, test in _AREAS:
        if test(frame):
            return area
    return "other"


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Self samples per area (of all samples), and per thread and function (of the samples not
    spent waiting), from a py-spy raw file."""
    functions: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = busy = 0
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = "?"
        thread_match = _THREAD.match(parts[0])
        if thread_match is not None:
            thread = thread_match["name"] or thread_match["tid"]
            parts = parts[1:]
        if not parts:
            continue
        leaf = _parse_frame(parts[-1])
        area = area_of(leaf)
        areas[area] += count
        total += count
        if area.startswith(_WAITING):
            continue
        busy += count
        functions[leaf.name] += count
        threads[_thread_kind(thread, parts)] += count
    return {
        "samples": total,
        "busy_samples": busy,
        "sample_rate": SAMPLE_RATE,
        "areas": _shares(areas, total),
        # Of the samples not spent waiting:
        "threads": _shares(threads, busy),
        "functions": _shares(functions, busy, top),
    }


def _thread_kind(name: str, frames: list[str]) -> str:
    if name == "MainThread":
        return "event loop (main thread)"
    if any("aiosqlite/core.py" in frame for frame in frames):
        return "database threads (aiosqlite)"
    return name


def _shares(counter: Counter[str], total: int, top: int | None = None) -> list[dict[str, Any]]:
    return [
        {"name": name, "samples": count, "percent": 100.0 * count / total if total else 0.0}
        for name, count in counter.most_common(top)
    ]
