"""Stopping on SIGTERM/SIGINT within a deadline, and cancelling tasks without eating the caller's cancellation.

Shared by the proxy and the control plane (it imports neither). Two things
went wrong before this module, both seen as a proxy that ignored SIGTERM for
minutes and held its ports:

- `with suppress(CancelledError): await task` after `task.cancel()` also
  swallows a cancellation of the task doing the awaiting: a stop that lands
  in that moment is lost, and a loop around it runs on forever. Awaiting
  with `asyncio.wait` instead never raises what the awaited tasks raise, and
  lets the awaiting task's own cancellation through (`cancel_and_wait`).
- Nothing bounded the stop itself. `StopDeadline` does: once a stop signal
  comes, a thread waits `deadline_s`; if the process is still there, it logs
  what it was still waiting for (each pending asyncio task and where it is,
  or where the event loop's thread is stuck when the loop cannot answer) and
  exits with status 1.

A proxy drains before it stops (up to its --drain-timeout, glassmesh/proxy/
drain.py): its deadline is that drain plus `deadline_s` to close, so a drain
is never cut by the deadline and a stop still cannot hang for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable

# After SIGTERM (and after its drain, for a proxy), a process exits within this no matter what
# (status 1 when forced).
STOP_DEADLINE_S = 10.0
_ENV = "GLASSMESH_STOP_DEADLINE_S"  # overrides it (seconds)


def deadline_s() -> float:
    try:
        return max(0.5, float(os.environ[_ENV]))
    except (KeyError, ValueError):
        return STOP_DEADLINE_S


def _retrieve(t: asyncio.Future[object]) -> None:
    """A done callback: read a finished task's exception so it is not reported as never retrieved."""
    if not t.cancelled():
        t.exception()


async def cancel_and_wait(*tasks: asyncio.Future[object] | None, timeout: float | None = None,
                          log: Callable[[str], None] | None = None) -> None:
    """Cancel `tasks` and wait until they are done (at most `timeout` s, naming those that are not).

    Whatever the tasks end with (cancelled, an exception, a result) is not
    raised here; a cancellation of the caller is: it propagates as it should.
    """
    todo = [t for t in tasks if t is not None and not t.done()]
    for t in tasks:
        if t is not None:
            t.add_done_callback(_retrieve)
    for t in todo:
        t.cancel()
    if not todo:
        return
    _, pending = await asyncio.wait(todo, timeout=timeout)
    if pending and log is not None:
        log(f"still running {timeout:g} s after being cancelled, left behind: {describe(pending)}")


def _where(task: asyncio.Task[object]) -> str:
    """Where a suspended task waits: the innermost glassmesh frame of its await chain, and the way there."""
    chain = []
    c: object = task.get_coro()
    while c is not None:
        frame = getattr(c, "cr_frame", None) or getattr(c, "gi_frame", None)
        if frame is None:
            break
        chain.append(frame)
        c = getattr(c, "cr_await", None) or getattr(c, "gi_yieldfrom", None)
    ours = [f for f in chain if "glassmesh/" in f.f_code.co_filename] or chain[-1:]
    if not ours:
        return ""
    f = ours[-1]
    via = " < ".join(x.f_code.co_name for x in reversed(ours[:-1]))
    inner = chain[-1]
    deeper = f", in {_short_path(inner.f_code.co_filename)}:{inner.f_lineno} {inner.f_code.co_name}" \
        if inner is not f else ""
    return (f" at {_short_path(f.f_code.co_filename)}:{f.f_lineno} in {f.f_code.co_name}" + (f" < {via}" if via else "")
            + deeper + (f", awaiting {type(c).__name__}" if c is not None else ""))


def _short_path(path: str) -> str:
    i = path.rfind("glassmesh/")
    return path[i:] if i >= 0 else os.path.basename(path)


def describe(tasks: Iterable[asyncio.Future[object]]) -> str:
    """Tasks as `name at file:line in function` (where each is suspended), for a log line."""
    out = []
    for t in tasks:
        if isinstance(t, asyncio.Task):
            out.append(f"task {t.get_name()!r}{_where(t)}")
        else:
            out.append(repr(t))
    return "; ".join(sorted(out)) or "nothing"


class StopDeadline:
    """Arm once on the first stop signal; past the deadline, log what is pending and exit(1).

    The deadline is `drain_s` (the time the process may take to finish what is
    in flight) plus `deadline_s()` (to close once that is over).
    """

    def __init__(self, who: str, log: Callable[[str], None], drain_s: float = 0.0) -> None:
        self.who, self.log = who, log
        self.drain_s = max(0.0, drain_s)
        self.armed_by = ""
        self._lock = threading.Lock()

    def arm(self, loop: asyncio.AbstractEventLoop, why: str) -> None:
        with self._lock:
            if self.armed_by:
                return
            self.armed_by = why
        limit = self.drain_s + deadline_s()
        threading.Thread(target=self._expire, args=(loop, limit), name="stop-deadline", daemon=True).start()

    def _expire(self, loop: asyncio.AbstractEventLoop, limit: float) -> None:
        threading.Event().wait(limit)
        seen = threading.Event()
        listed: list[str] = []

        def list_tasks() -> None:  # on the loop's thread: asyncio's task list is not thread-safe
            me = asyncio.current_task(loop)
            listed.append(describe([t for t in asyncio.all_tasks(loop) if t is not me]))
            seen.set()

        try:
            loop.call_soon_threadsafe(list_tasks)
        except RuntimeError:  # the loop is closed: whatever holds the process is not a task
            pass
        if seen.wait(1.0):
            what = listed[0]
        else:
            what = "the event loop, which does not answer: its thread is at " + _main_thread_at()
        self.log(f"{self.who} (pid {os.getpid()}) still stopping {limit:g} s after {self.armed_by}; waiting for: "
                 f"{what}; exiting now (status 1)")
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stdout.flush()
        os._exit(1)


def _main_thread_at() -> str:
    main = threading.main_thread().ident
    frame = sys._current_frames().get(main) if main is not None else None
    if frame is None:
        return "an unknown place"
    stack = traceback.extract_stack(frame)[-3:]
    return " <- ".join(f"{_short_path(s.filename)}:{s.lineno} in {s.name}" for s in reversed(stack))


def on_stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], object],
                    deadline: StopDeadline) -> Callable[[], None]:
    """SIGTERM and SIGINT arm `deadline` and call `stop` on the loop; returns a function that undoes this.

    A Python-level handler (signal.signal), not loop.add_signal_handler: it
    runs even while the loop's thread is stuck in a system call (a write to
    a full pipe), so the deadline is armed when the loop cannot answer.
    """
    def handler(signum: int, frame: object) -> None:
        deadline.arm(loop, signal.Signals(signum).name)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
            loop.call_soon_threadsafe(stop)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def undo() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return undo
