"""Pre-emption: SIGTERM (TPU maintenance, Slurm, GKE, `kill`) and Ctrl-C (SIGINT) become "save
at the next step boundary and exit", the same step on every process."""

import contextlib
import logging
import os
import signal
import threading

import jax

from bertjax import interrupt

log = logging.getLogger(__name__)


class PreemptionWatcher:
    """Turns SIGTERM (TPU maintenance, Slurm pre-emption, `kill`) into "stop at a step boundary".

    With several processes all must stop at the same step, or the collectives of the next step
    would hang: JAX's preemption sync point gives every process the same answer for a given
    step, after SIGTERM reached any of them. Its notifier is the distributed runtime's own
    SIGTERM handler, so no Python handler may replace it there. With one process, a Python
    handler sets a flag.

    Inside `stopping_on_interrupt()`, Ctrl-C is handled the same way (`bertjax.interrupt`
    defers it): with several processes this one sends itself SIGTERM, so that the runtime
    tells every process. `interrupted` says which of the two it was.
    """

    def __init__(self):
        self._requested = threading.Event()
        self._multiprocess = jax.process_count() > 1
        self._previous = None
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint at the next step boundary, then exit")
        self._requested.set()

    def should_stop(self, step: int) -> bool:
        """True when the run must save at `step` and exit; the same on every process."""
        if self._multiprocess:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        return self._requested.is_set() or interrupt.requested()

    @property
    def interrupted(self) -> bool:
        """True when the stop comes from Ctrl-C in this process (not a SIGTERM)."""
        return interrupt.requested()

    def stopping_on_interrupt(self) -> contextlib.AbstractContextManager:
        """A block in which Ctrl-C makes `should_stop` true instead of raising at once."""
        forward = (lambda: os.kill(os.getpid(), signal.SIGTERM)) if self._multiprocess else None
        return interrupt.deferred(forward)

    def close(self) -> None:
        """Restores the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
