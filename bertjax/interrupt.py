"""Ctrl-C (SIGINT) as one flag for the whole command: raised at once as KeyboardInterrupt, or,
inside `deferred()`, only recorded for the code to act on at a safe point (a training step
boundary). Where Python swallows the exception (it may be raised inside a garbage-collection
callback or a `__del__`, which print "Exception ignored" and go on), it is raised again as soon
as the interpreter is back in ordinary code, without the message.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker


class Stopped(KeyboardInterrupt):
    """Ctrl-C acted on at a safe point, the work saved: str() says what was saved."""


_requested = threading.Event()
_deferred: list[Callable[[], None] | None] = []  # innermost last; the callback of each
_swallowed = threading.Event()  # set while a swallowed KeyboardInterrupt is delivered again


def install() -> None:
    """Makes SIGINT go through this module (from the main thread; elsewhere a no-op), with no
    interrupt recorded yet. An ignored SIGINT stays ignored: a shell starts background jobs
    so, to keep Ctrl-C off them."""
    clear()
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)
        if not getattr(sys.unraisablehook, "redelivers_interrupts", False):
            sys.unraisablehook = _redelivering(sys.unraisablehook)


def _on_sigint(signum, frame) -> None:
    if _swallowed.is_set():  # the same Ctrl-C, delivered again
        _swallowed.clear()
        if _deferred:
            return
        raise KeyboardInterrupt
    first = not _requested.is_set()
    _requested.set()
    if _deferred and first:
        callback = _deferred[-1]
        if callback is not None:
            callback()
        return
    raise KeyboardInterrupt


def _redelivering(previous_hook):
    """A sys.unraisablehook that, for our swallowed KeyboardInterrupt, prints nothing and has
    SIGINT delivered again a moment later, from another thread: by then the main thread is
    out of the callback (delivered from here, the handler would run inside this hook)."""

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and _requested.is_set():
            _swallowed.set()
            threading.Timer(0.01, _thread.interrupt_main, (signal.SIGINT,)).start()
        else:
            previous_hook(unraisable)

    hook.redelivers_interrupts = True
    return hook


def requested() -> bool:
    """True once SIGINT arrived (raised, deferred or swallowed)."""
    return _requested.is_set()


def check() -> None:
    """Raises KeyboardInterrupt if SIGINT arrived: at the points where work may stop cleanly."""
    if _requested.is_set():
        raise KeyboardInterrupt


def clear() -> None:
    """Forgets an earlier SIGINT (for tests that run several commands in one process)."""
    _requested.clear()
    _swallowed.clear()


@contextlib.contextmanager
def deferred(on_request: Callable[[], None] | None = None) -> Iterator[None]:
    """Inside the block the first SIGINT only sets the flag (and calls `on_request`); the code
    polls `requested()` at its safe points. A second SIGINT raises at once."""
    _deferred.append(on_request)
    try:
        yield
    finally:
        _deferred.pop()


def ignore_in_worker() -> None:
    """For worker processes: SIGINT ignored (the parent ends them), then unblocked (see
    `blocked_while_starting`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def blocked_while_starting() -> Iterator[None]:
    """SIGINT blocked in this thread while it starts worker processes: a child inherits the
    mask, so a Ctrl-C that reaches it (a terminal signals the whole process group) before its
    initializer calls `ignore_in_worker` waits instead of printing a KeyboardInterrupt
    traceback. A SIGINT meant for this process is delivered when the block ends."""
    # multiprocessing starts its resource tracker on first use and unblocks SIGINT after
    # doing so: started first, it leaves the mask alone inside the block.
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
