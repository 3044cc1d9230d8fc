"""Step metrics from the devices to the log, shared by pretraining and fine-tuning: fetched one
step late so the host never idles the devices, with throughput and a NaN check."""

import math
import time

# The advice of a diverged pretraining run, in its config keys.
PRETRAINING_REMEDY = (
    "Check the data first (keep data.verify_checksums=true: corrupt shards and token ids outside "
    "the vocabulary are then caught), then the learning rate: lower optim.peak_lr, raise "
    "optim.warmup_steps, or keep optim.clip_norm > 0"
)


def check_finite(step: int, metrics: dict, last_good: int, *, remedy: str) -> None:
    """Stops the run on a NaN or Inf loss, naming the step (nothing is saved after it).
    `remedy` ends the message: advice in the caller's own settings."""
    if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(
            f"loss is {metrics['loss']} at step {step} (last finite check: step {last_good}); "
            f"stopping without saving. {remedy}"
        )


class StepMetrics:
    """Deferred fetching of the metrics of logged steps.

    Call `dispatched(step, metrics, log=...)` right after dispatching a step: it first fetches
    the previous logged step's metrics (the devices are busy with the new one by then), or
    waits for the previous step to finish when it was not logged, then keeps this step's if it
    is to be logged. The host thus stays at most one step ahead of the devices: a deeper queue
    gains nothing, holds every queued batch in device memory, and XLA:CPU (jaxlib 0.10) can
    deadlock its collectives with ~32 multi-device programs queued. `flush()` fetches what is
    pending now (before an evaluation, a checkpoint, the end). Each fetch adds `tokens_per_s`
    since the previous one (padded tokens: `tokens_per_step` each, or the steps' own counts
    given to `dispatched`, as length-bucketed fine-tuning steps differ; `real_tokens_per_s`
    too when the step counts its real tokens; given `flops_per_step`, `model_flops_per_s`;
    given `peak_flops` too, `mfu`), writes the record through `writer` and stops the run on a
    non-finite loss.
    """

    def __init__(
        self,
        writer,
        tokens_per_step: int,
        start_step: int,
        *,
        remedy: str,
        flops_per_step: float = 0.0,
        peak_flops: float | None = None,
    ):
        self._writer = writer
        self._tokens_per_step = tokens_per_step
        self._flops_per_step = flops_per_step
        self._peak_flops = peak_flops
        self._remedy = remedy
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._pending = None
        self._previous = None  # the last dispatched step's metrics, until the next dispatch
        self._real_tokens = None  # device sum of "real_tokens" since the last fetch
        self._tokens = None  # host sum of the dispatched steps' `tokens` since the last fetch

    def restart_clock(self) -> None:
        """Throughput excludes what happened since the last fetch (an evaluation, a save)."""
        self._last_time = time.perf_counter()

    def dispatched(
        self, step: int, metrics, *, log: bool, tokens: int | None = None
    ) -> dict | None:
        """Fetches the pending step (returns its record, or None), or waits for the previous
        step to finish, then defers this one. `tokens`: the padded tokens this step computed,
        when steps differ (default: tokens_per_step)."""
        import jax

        record = self.flush()
        if record is None and self._previous is not None:
            jax.block_until_ready(self._previous)
        self._previous = metrics
        self._pending = (step, metrics) if log else None
        if tokens is not None:
            self._tokens = (self._tokens or 0) + tokens
        if "real_tokens" in metrics:  # summed on the device every step: exact, never waits
            real = metrics["real_tokens"]
            self._real_tokens = real if self._real_tokens is None else self._real_tokens + real
        return record

    def flush(self) -> dict | None:
        """Fetches the pending step's metrics now; returns its record (None if none pending)."""
        if self._pending is None:
            return None
        import jax

        step, metrics = self._pending
        self._pending = None
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        seconds = max(now - self._last_time, 1e-9)
        steps_per_s = (step - self._last_step) / seconds
        metrics["tokens_per_s"] = self._tokens_per_step * steps_per_s
        if self._tokens is not None:  # the steps' own counts: each step's length may differ
            metrics["tokens_per_s"] = self._tokens / seconds
            self._tokens = None
        if self._real_tokens is not None:  # non-pad tokens beside the padded figure above
            metrics["real_tokens_per_s"] = float(self._real_tokens) / seconds
            self._real_tokens = None
        if self._flops_per_step:
            metrics["model_flops_per_s"] = self._flops_per_step * steps_per_s
            if self._peak_flops:
                metrics["mfu"] = metrics["model_flops_per_s"] / self._peak_flops
        self._writer.write(step, metrics)  # a NaN is logged too (as null), then stops the run
        check_finite(step, metrics, self._last_step, remedy=self._remedy)
        self._last_step, self._last_time = step, now
        return {"step": step, **metrics}
