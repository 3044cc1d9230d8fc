"""A checkpoint that fails to restore is one warning line: what orbax, tensorstore and asyncio
print while the read fails and after (a traceback per array, per abandoned task, per read that
finishes after its event loop closed, per coroutine never awaited: thousands of lines for a
large model) is held back and dropped. BERTJAX_DEBUG=1 shows all of it and the full trace."""

import contextlib
import gc
import logging
import os
import sys
import traceback
import warnings

DEBUG_ENV = "BERTJAX_DEBUG"
_NOISY_LOGGERS = ("absl", "asyncio", "orbax", "tensorstore", "jax")
# Where the code of a checkpoint read lives (path parts of site-packages).
_CHECKPOINT_IO_CODE = ("/orbax/checkpoint/", "/tensorstore/")


def debugging() -> bool:
    """True when BERTJAX_DEBUG asks for every trace."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


class _Hold(logging.Filter):
    """Holds back the records of the noisy loggers (kept, for a restore that succeeds)."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in _NOISY_LOGGERS:
            self.held.append(record)
            return False
        return True


class _DropAbandonedReads(logging.Filter):
    """asyncio's "Task exception was never retrieved" of orbax's failed reads, printed when
    the task is garbage-collected, possibly long after the restore gave up on it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "asyncio" or "never retrieved" not in str(record.msg):
            return True
        text = (
            record.getMessage() + "".join(traceback.format_exception(*record.exc_info))
            if (record.exc_info)
            else record.getMessage()
        )
        return not any(word in text for word in ("orbax", "tensorstore"))


_DROP_ABANDONED = _DropAbandonedReads()


def _from_abandoned_read(unraisable) -> bool:
    """Whether an unraisable exception comes from a tensorstore read of the failed restore:
    "Event loop is closed" when the read finishes after orbax closed its loop, an error raised
    in orbax's or tensorstore's own code (seen under load: orbax's read coroutine, closed when
    collected, raises its read error again; its message alone is a TensorStore spec of hundreds
    of lines), or any error in a callback of a TensorStore object."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return True
    tb = getattr(unraisable, "exc_traceback", None) or getattr(exc, "__traceback__", None)
    for frame, _ in traceback.walk_tb(tb):
        if any(part in frame.f_code.co_filename for part in _CHECKPOINT_IO_CODE):
            return True
    try:
        where = repr(unraisable.object)
    except Exception:  # a repr that fails is no reason to print a traceback
        return False
    return "TensorStore" in where


def _drop_abandoned_read_errors(previous_hook):
    """A sys.unraisablehook that drops what tensorstore reads of the failed restore raise in
    callbacks after orbax gave up on them (`_from_abandoned_read`)."""

    def hook(unraisable):
        if not _from_abandoned_read(unraisable):
            previous_hook(unraisable)

    hook.drops_abandoned_reads = True
    return hook


def _handlers() -> list[logging.Handler]:
    # Filters on a handler see every record that reaches it, a logger's only its own.
    return [*logging.getLogger().handlers, logging.lastResort]


@contextlib.contextmanager
def attempt():
    """A restore attempt: on success the held-back records are logged as usual; on an error
    they are dropped (unless debugging), and so are the abandoned reads' tracebacks for the
    rest of the process."""
    if debugging():
        yield
        return
    hold, handlers = _Hold(), _handlers()
    for h in handlers:
        h.addFilter(hold)
    if not getattr(sys.unraisablehook, "drops_abandoned_reads", False):  # they come mid-attempt
        sys.unraisablehook = _drop_abandoned_read_errors(sys.unraisablehook)
    failed = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        failed = True
        for h in handlers:
            if _DROP_ABANDONED not in h.filters:
                h.addFilter(_DROP_ABANDONED)
        # Their coroutines, collected later, would each warn that they were never awaited.
        warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)
        gc.collect()  # the failed reads' tasks, while their records are still held back
        raise
    finally:
        for h in handlers:
            h.removeFilter(hold)
        if not failed:
            for record in hold.held:
                logging.getLogger(record.name).handle(record)


def warn(message: str) -> None:
    """One line on stderr (the full trace of the exception being handled when debugging)."""
    if debugging():
        traceback.print_exc(file=sys.stderr)
    print(f"bertjax: warning: {message}", file=sys.stderr, flush=True)


def reason(e: BaseException) -> str:
    """An exception as a short one-line reason."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"
