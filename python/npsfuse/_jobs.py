"""Go calls that Ctrl-C can stop.

A Go call blocks the thread that made it until it returns, and CPython runs
signal handlers only in the main thread between bytecodes: a long merge made
from the main thread would take Ctrl-C only once it is done. :func:`run`
makes the call from a worker thread instead (one, kept for the next calls)
and waits on an Event; on
``KeyboardInterrupt`` it cancels the Go job (``CancelJob``), waits until the
call has returned (it stops within one chunk of work, and must not write
into buffers the caller is about to free) and re-raises.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from . import _core

#: Job ids of in-memory merges: negative, as ``merge_checkpoints`` counts up
#: from 1 and both share the Go side's table of running jobs.
_job_ids = itertools.count(-1, -1)


class _Worker:
    """One long-lived thread making the main thread's Go calls: a fresh
    thread per call costs about 1.5 ms (the Go runtime sets up each new
    foreign thread), more than a small merge takes."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.calls: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue())
        threading.Thread(target=self._loop, name="npsfuse-jobs", daemon=True).start()

    def _loop(self) -> None:
        while True:
            work, finished = self.calls.get()
            try:
                work()
            finally:
                finished.set()


_worker: _Worker | None = None

#: Bytes of tensors from which a merge goes through the worker: handing a
#: call over costs 0.2-0.3 ms, and a smaller merge is over in a few ms.
WORTH_A_WORKER = 1 << 22


def run(
    fn: Callable[..., Any],
    *args: Any,
    nbytes: int = WORTH_A_WORKER,
    job: int | None = None,
    late: Callable[[], None] | None = None,
) -> Any:
    """``_core.call(fn, job, *args)``, stopped by Ctrl-C (``KeyboardInterrupt``).

    ``fn`` takes a job id first and registers it for ``CancelJob``. Outside
    the main thread (where no ``KeyboardInterrupt`` arrives), or for a call
    over less than :data:`WORTH_A_WORKER` bytes of tensors (``nbytes``), the
    call is made directly.

    Parameters
    ----------
    job
        The job id (default: the next of this module's negative ids).
    late
        For a call with an effect that outlives it (a folder written): when
        the Ctrl-C came after the call had succeeded (too late to cancel it),
        ``late()`` is called and the result returned instead of the
        ``KeyboardInterrupt``. Without it the interrupt is re-raised.
    """
    global _worker
    if job is None:
        job = next(_job_ids)
    if nbytes < WORTH_A_WORKER or threading.current_thread() is not threading.main_thread():
        return _core.call(fn, job, *args)
    if _worker is None or _worker.pid != os.getpid():  # none yet, or forked
        _worker = _Worker()
    box: dict[str, Any] = {}
    # An Event, not Thread.join: CPython 3.10-3.12 can mark a thread stopped
    # when Ctrl-C lands in join(timeout), and a later join() then returns
    # before the Go call has cleaned up (a merge's temporary folder).
    finished = threading.Event()

    def work() -> None:
        try:
            box["result"] = _core.call(fn, job, *args)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    _worker.calls.put((work, finished))
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        cancelled = False
        while not finished.is_set():
            try:  # a second Ctrl-C must not cut the wait short
                # Until the job is registered (the call may not have reached
                # Go yet) CancelJob finds nothing: try again.
                cancelled = cancelled or bool(_core.go.CancelJob(job))
                finished.wait(0.02)
            except KeyboardInterrupt:
                continue
        if late is None or "result" not in box:
            raise
        late()
    if "error" in box:
        raise box["error"]
    return box["result"]
