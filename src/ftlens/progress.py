"""Progress on stderr: rich bars in a terminal, plain lines in logs.

When stderr is a terminal, live rich bars. When it is not (``nohup``, cluster logs, pipes),
one plain line per stage and per finished unit of work (an inversion, an epoch, a
checkpoint), each with the elapsed time and an ETA::
    [ftlens 12:03:04] inversions: 3/24 (12%) elapsed 0:00:41 eta 0:04:47 | last: blocks.0 seed 0 ...

``FTLENS_PROGRESS=0`` silences both, ``=1`` forces the live bars, ``=log`` forces plain lines.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import track as rich_track

T = TypeVar("T")

#: a task with more units than this logs only every tenth of the way (and its last unit)
_MANY = 200


def mode() -> str:
    """``"off"``, ``"bar"`` (a terminal) or ``"log"`` (plain lines)."""
    flag = os.environ.get("FTLENS_PROGRESS")
    if flag is not None:
        flag = flag.strip().lower()
        if flag in ("0", "false", "no", "off", ""):
            return "off"
        if flag == "log":
            return "log"
        return "bar"
    return "bar" if sys.stderr.isatty() else "log"


def enabled() -> bool:
    """Whether progress is shown at all (bars or lines)."""
    return mode() != "off"


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def line(message: str) -> None:
    """One plain progress line on stderr (nothing when progress is off)."""
    if mode() == "off":
        return
    print(f"[ftlens {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stage(message: str) -> None:
    """Announce a stage of a command (``loading models``, ``inverting``, ...) on stderr."""
    line(message)


class LogProgress:
    """The subset of rich's ``Progress`` that ftlens uses, printing plain lines instead of bars.

    Only the first task added logs (the overall one: inversions of a comparison, epochs of a
    run); nested tasks (steps within an inversion or an epoch) stay silent. A line is written
    when the logged task's completed count changes (at most every tenth of the way for tasks
    of more than 200 units), with the info of the same or the next update call.
    """

    def __init__(self) -> None:
        self._tasks: dict[int, dict[str, Any]] = {}
        self._logged: int | None = None
        self._pending = False
        self._next = 0

    # context manager / lifecycle
    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._flush()

    # tasks
    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        self._flush()
        task_id = self._next
        self._next += 1
        self._tasks[task_id] = {"description": description, "total": total, "completed": completed,
                                "start": time.perf_counter(), "start_completed": completed, "fields": dict(fields)}
        if self._logged is None:
            self._logged = task_id
            line(f"{description.strip()}: {self._count(self._tasks[task_id])} to do")
        return task_id

    def remove_task(self, task_id: int) -> None:
        if task_id == self._logged:
            self._flush()
        self._tasks.pop(task_id, None)

    def reset(self, task_id: int, *, total: float | None = None, description: str | None = None,
              completed: float = 0, **fields: Any) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        if total is not None:
            task["total"] = total
        if description is not None:
            task["description"] = description
        task["completed"] = completed
        task["fields"].update(fields)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields: Any) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        before = task["completed"]
        if total is not None:
            task["total"] = total
        if description is not None:
            task["description"] = description
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        task["fields"].update(fields)
        if task_id != self._logged:
            self._flush()
            return
        if task["completed"] != before and self._due(task, before):
            self._flush()  # a previous change still waiting for its info
            self._pending = True
        elif self._pending:
            self._flush()

    # lines
    def _due(self, task: dict[str, Any], before: float) -> bool:
        total = task["total"]
        if not total or total <= _MANY or task["completed"] >= total:
            return True
        step = total / 10
        return int(task["completed"] // step) != int(before // step)

    def _count(self, task: dict[str, Any]) -> str:
        total = task["total"]
        done = task["completed"]
        return f"{done:g}/{total:g}" if total else f"{done:g}"

    def _flush(self) -> None:
        if not self._pending or self._logged is None:
            return
        self._pending = False
        task = self._tasks.get(self._logged)
        if task is None:
            return
        elapsed = time.perf_counter() - task["start"]
        done = task["completed"] - task["start_completed"]
        total = task["total"]
        parts = [f"{task['description'].strip()}: {self._count(task)}"]
        if total:
            parts[0] += f" ({100 * task['completed'] / total:.0f}%)"
        parts.append(f"elapsed {_clock(elapsed)}")
        if total and done > 0 and task["completed"] < total:
            parts.append(f"eta {_clock(elapsed / done * (total - task['completed']))}")
        info = str(task["fields"].get("info") or "").strip()
        line(" ".join(parts) + (f" | {info}" if info else ""))


def track(iterable: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (terminal) or a line per item (logs) on stderr."""
    m = mode()
    if m == "off":
        yield from iterable
        return
    if m == "bar":
        yield from rich_track(iterable, description=description, total=total, transient=True)
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar = LogProgress()
    task = bar.add_task(description, total=total)
    try:
        for item in iterable:
            yield item
            bar.advance(task)
    finally:
        bar.stop()


def make_progress():
    """A rich ``Progress`` in a terminal, a :class:`LogProgress` in logs, ``None`` when off."""
    m = mode()
    if m == "off":
        return None
    if m == "log":
        return LogProgress()

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )
