"""`--profile-steps A:B`: a jax.profiler trace of training steps A to B (inclusive)."""

import os
import re
from collections.abc import Callable

import jax

from bertjax.errors import UserError


def parse_profile_steps(spec: str) -> tuple[int, int]:
    """Parses "A:B" into (A, B); a UserError unless 0 <= A <= B are integers."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec or "")
    if not m or int(m[1]) > int(m[2]):
        raise UserError(
            f"--profile-steps must be START:STOP with integers 0 <= START <= STOP "
            f"(for example 10:15), got {spec!r}"
        )
    return int(m[1]), int(m[2])


class StepProfiler:
    """Starts a jax.profiler trace before step A and stops it after step B.

    Call `on_step(step)` at the top of every loop iteration with the step about to run, and
    `close()` after the loop (the run may end inside the window). Dispatch is asynchronous,
    so pass the latest step outputs as `wait_for`: the trace then stops only once step B's
    device work is done and contains it. A resumed run that starts inside the window traces
    from its first step. The trace lands in LOGDIR/plugins/profile/<run>/ (TensorBoard's
    profile plugin reads it) together with a perfetto_trace.json.gz for ui.perfetto.dev.
    """

    def __init__(
        self, spec: str, logdir: str | os.PathLike, log: Callable[[str], None] | None = None
    ):
        self.start, self.stop = parse_profile_steps(spec)
        self.logdir = os.fspath(logdir)
        self._log = log or (lambda message: None)
        self.active = False
        self.done = False

    def on_step(self, step: int, wait_for=None) -> None:
        """Starts or stops the trace as `step` (about to run) enters or leaves the window."""
        if self.active and step > self.stop:
            self._finish(wait_for)
        elif not self.active and not self.done and self.start <= step <= self.stop:
            jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
            self.active = True
            self._log(f"profiling steps {step}..{self.stop} into {self.logdir}")

    def close(self, wait_for=None) -> None:
        """Stops a trace still running (the loop ended inside the window)."""
        if self.active:
            self._finish(wait_for)

    def _finish(self, wait_for) -> None:
        if wait_for is not None:
            jax.block_until_ready(wait_for)
        jax.profiler.stop_trace()
        self.active = False
        self.done = True
        self._log(f"wrote the profiler trace to {self.logdir}")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
