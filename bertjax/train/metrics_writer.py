"""Training logs in the workdir (local or gs://): metrics.jsonl, TensorBoard scalars and a
progress line."""

import collections
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

import numpy as np

from bertjax.train import workdir_io

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
_RESERVED = frozenset({"step", "split", "time"})
_TB_FILE_NUMBERS = itertools.count()  # event files opened by this process, as TF names them
_RATE_WINDOW = 20  # ETA from the step rate over the last 20 writes: recent, yet not jumpy

# Metrics shown on the progress line, with their short labels and formats, in this order.
_TRAIN_FIELDS = (
    ("loss", "loss", "{:.4f}"),
    ("mlm_accuracy", "mlm_acc", "{:.3f}"),
    ("nsp_accuracy", "nsp_acc", "{:.3f}"),
    ("learning_rate", "lr", "{:.2e}"),
)
_EVAL_FIELDS = (
    ("loss", "loss", "{:.4f}"),
    ("mlm_accuracy", "mlm_acc", "{:.3f}"),
    ("nsp_accuracy", "nsp_acc", "{:.3f}"),
    ("mlm_perplexity", "ppl", "{:.2f}"),
)


def metrics_path(workdir: str | os.PathLike):
    """The metrics.jsonl file of a workdir (a pathlib.Path, or an epath.Path for a URL)."""
    return workdir_io.path(workdir) / METRICS_FILE


def to_json_number(name: str, value) -> int | float | bool | None:
    """Converts a scalar metric (Python, numpy or JAX) to a JSON value; NaN/inf -> None."""
    array = np.asarray(value)
    if array.shape != ():
        raise ValueError(f"metric {name!r} must be a scalar, got an array of shape {array.shape}")
    if array.dtype.kind == "b":
        return bool(array)
    if array.dtype.kind in "iu":
        return int(array)
    if array.dtype.kind != "f":
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
    x = float(array)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def format_duration(seconds: float) -> str:
    """Formats a duration compactly: 45s, 3m12s, 2h05m."""
    seconds = round(float(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _format_rate(tokens_per_s: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if tokens_per_s >= scale:
            return f"{tokens_per_s / scale:.1f}{suffix} tok/s"
    return f"{tokens_per_s:.0f} tok/s"


def _fields(record: Mapping, fields, prefix: str = "") -> list[str]:
    parts = []
    for key, label, fmt in fields:
        value = record.get(prefix + key)
        if value is not None:
            parts.append(f"{label} {fmt.format(value)}")
        elif prefix + key in record:
            parts.append(f"{label} nan")
    return parts


class MetricsWriter:
    """Writes metrics.jsonl, TensorBoard scalars and a progress line; only where enabled.

    WORKDIR/metrics.jsonl holds one strict JSON object per line (no NaN literals):
      {"step": 100, "split": "train", "time": 1718000000.1, "loss": 7.21, "learning_rate": 1e-05}
      {"step": 500, "split": "eval", "time": 1718000100.4, "eval_loss": 6.9,
       "eval_mlm_accuracy": 0.1}
    `split` tells training and evaluation records apart; evaluation metric names also carry an
    `eval_` prefix, so the two can be merged into one dict without collisions. Floats keep 6
    significant digits; NaN and infinities are written as null (JSON has no NaN, and a diverged
    loss must not make the file unreadable). `time` is the wall clock (Unix seconds). A resumed
    run appends to the same file; read_metrics() drops the records a restart superseded.
    TensorBoard scalars go to WORKDIR/tb as `train/<name>` and `eval/<name>`.

    A remote workdir (gs://bucket/run) gets the same files: metrics.jsonl is kept in memory
    and uploaded whole, TensorBoard writes to a local staging directory that is uploaded to
    WORKDIR/tb; both at most every `sync_secs` and at close() (see workdir_io). A local
    workdir is written in place at every write, as before.

    Use one per run, in process 0 only (`enabled=jax.process_index() == 0`): a disabled
    writer creates no file and prints nothing. On a terminal the progress line is rewritten
    in place (`\\r`); when the stream is not a TTY (a log file, CI) each write prints one line.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        total_steps: int,
        enabled: bool = True,
        tensorboard: bool = True,
        stream: TextIO | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sync_secs: float = workdir_io.SYNC_SECS,
    ):
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {total_steps}")
        self.workdir = workdir_io.path(workdir)
        self.total_steps = int(total_steps)
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stdout
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._clock = clock
        self._times = collections.deque(maxlen=_RATE_WINDOW)  # (clock, step) of recent writes
        self._live_width = 0  # length of the live line on screen (TTY), 0 if none
        self._file = None
        self._tb = None
        self._tb_dir = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._file = workdir_io.open_append(metrics_path(self.workdir), sync_secs=sync_secs)
        if tensorboard:
            from tensorboardX import SummaryWriter  # heavy (protobuf): only when used

            # tensorboardX writes local files only (its gs:// needs google-cloud-storage).
            self._tb_dir = workdir_io.StagedDir(self.workdir / TENSORBOARD_DIR, sync_secs=sync_secs)
            # tensorboardX names files by the second and host only: a run resumed within the
            # same second would overwrite the previous file (remote: its uploaded copy).
            suffix = f".{os.getpid()}.{next(_TB_FILE_NUMBERS)}"
            self._tb = SummaryWriter(
                logdir=str(self._tb_dir.local), flush_secs=30, filename_suffix=suffix
            )

    def write(self, step: int, metrics: Mapping[str, object]) -> dict:
        """Logs training metrics of `step` (loss, mlm_accuracy, learning_rate, tokens_per_s...)."""
        if not self.enabled:
            return {}
        record = self._record(step, metrics, split="train", prefix="")
        self._append(record, tb_prefix="train/", strip="")
        now = self._clock()
        self._times.append((now, record["step"]))
        line = " | ".join(
            [self._step_text(record["step"]), *_fields(record, _TRAIN_FIELDS)]
            + self._throughput_and_eta(record)
        )
        self._show(line, keep=False)
        return record

    def write_eval(self, step: int, metrics: Mapping[str, object]) -> dict:
        """Logs evaluation metrics of `step`; names get an `eval_` prefix, `split` is "eval"."""
        if not self.enabled:
            return {}
        record = self._record(step, metrics, split="eval", prefix="eval_")
        self._append(record, tb_prefix="eval/", strip="eval_")
        line = " | ".join(
            [f"eval @ step {record['step']}", *_fields(record, _EVAL_FIELDS, "eval_")]
        )
        self._show(line, keep=True)
        return record

    def sync(self) -> None:
        """Uploads what a remote workdir's files have pending now, not at the next
        `sync_secs` (the loop calls it at each checkpoint, so that a killed run's resume never
        lacks rows before its checkpoint step). Local files are already on disk: no-op."""
        if isinstance(self._file, workdir_io.RewrittenTextFile):
            self._file.sync()
        if self._tb_dir is not None and self._tb_dir.remote:
            self._tb.flush()
            self._tb_dir.sync(force=True)

    def close(self) -> None:
        """Ends the live line and closes the files (safe to call twice)."""
        if self._live_width:
            self._stream.write("\n")
            self._stream.flush()
            self._live_width = 0
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._tb_dir is not None:
            self._tb_dir.close()
            self._tb_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # --- internals -------------------------------------------------------------------------

    def _record(self, step, metrics: Mapping, *, split: str, prefix: str) -> dict:
        record = {
            "step": to_json_number("step", step),
            "split": split,
            "time": round(time.time(), 3),
        }
        if not isinstance(record["step"], int) or record["step"] < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        for name, value in metrics.items():
            if not isinstance(name, str) or name in _RESERVED:
                raise ValueError(
                    f"metric name {name!r} is not allowed (reserved: step, split, time)"
                )
            key = name if name.startswith(prefix) else prefix + name
            record[key] = to_json_number(name, value)
        return record

    def _append(self, record: dict, *, tb_prefix: str, strip: str) -> None:
        # One write call per complete line, flushed: a kill leaves at most one partial line.
        # (Remote: flush() uploads the whole file, at most every sync_secs.)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is None:
            return
        for key, value in record.items():
            if key not in _RESERVED and value is not None:
                self._tb.add_scalar(tb_prefix + key.removeprefix(strip), value, record["step"])
        self._tb.flush()
        self._tb_dir.sync()

    def _step_text(self, step: int) -> str:
        width = len(str(self.total_steps))
        pct = f" ({100 * step / self.total_steps:3.0f}%)" if self.total_steps else ""
        return f"step {step:>{width}}/{self.total_steps}{pct}"

    def _throughput_and_eta(self, record: dict) -> list[str]:
        parts = []
        if record.get("tokens_per_s") is not None:
            parts.append(_format_rate(record["tokens_per_s"]))
        if record.get("real_tokens_per_s") is not None:
            parts.append(_format_rate(record["real_tokens_per_s"]).replace("tok/s", "real tok/s"))
        if record.get("mfu") is not None:
            parts.append(f"MFU {record['mfu']:.1%}")
        (t0, s0), (t1, s1) = self._times[0], self._times[-1]
        if t1 > t0 and s1 > s0:
            eta = (self.total_steps - s1) / ((s1 - s0) / (t1 - t0))
            parts.append(f"ETA {format_duration(max(eta, 0.0))}")
        else:
            parts.append("ETA --")
        return parts

    def _show(self, line: str, *, keep: bool) -> None:
        """Prints a line: in place on a TTY (kept lines end with a newline), else plainly."""
        if not self._tty:
            self._stream.write(line + "\n")
        else:
            columns = shutil.get_terminal_size(fallback=(120, 24)).columns
            line = line[: max(columns - 1, 20)]  # a wrapped line cannot be rewritten with \r
            self._stream.write("\r" + line.ljust(self._live_width) + ("\n" if keep else ""))
            self._live_width = 0 if keep else len(line)
        self._stream.flush()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """Reads WORKDIR/metrics.jsonl (local or remote) into a list of records, in file order.

    Tolerates a killed run: a line cut short (not ending in "}") is skipped. Resolves restarts:
    a resumed run starts again from its checkpoint step, so when a record's step is not past
    the previous record of the same split, the earlier records from that step on (logged by
    the run that was killed) are dropped. Any other unreadable line is an error.

    Raises:
      FileNotFoundError: no metrics.jsonl in workdir.
      ValueError: a line that is neither a JSON object nor a truncated one.
    """
    path = metrics_path(workdir)
    kept: list[dict | None] = []
    last_index: dict[str, list[int]] = collections.defaultdict(list)  # split -> indices in kept
    # Read whole, as bytes: epath's text mode (remote) would decode in the locale's encoding.
    text = path.read_bytes().decode("utf-8")
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if not line.endswith("}"):
                continue  # cut short by a kill
            raise ValueError(f"{path}:{lineno}: not a valid JSON line") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            # A bad file, not a bad argument: ValueError, like the JSON error above.
            raise ValueError(f"{path}:{lineno}: expected a JSON object with an integer step")
        indices = last_index[record.setdefault("split", "train")]
        while indices and kept[indices[-1]]["step"] >= record["step"]:
            kept[indices.pop()] = None  # superseded by the resumed run
        indices.append(len(kept))
        kept.append(record)
    return [record for record in kept if record is not None]


def drop_after(workdir: str | os.PathLike, step: int) -> int:
    """Rewrites WORKDIR/metrics.jsonl without the records past `step` (what a killed or
    failed run logged after the checkpoint a resumed run starts from), so the file keeps one
    row per step; lines cut short by a kill go too. Returns how many lines were dropped."""
    path = metrics_path(workdir)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_bytes().decode("utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if (
            isinstance(record, dict)
            and isinstance(record.get("step"), int)
            and (record["step"] > step)
        ):
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        workdir_io.write_atomic(path, "".join(line + "\n" for line in kept).encode("utf-8"))
    return dropped
