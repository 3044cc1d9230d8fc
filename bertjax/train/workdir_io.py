"""Run files (metrics.jsonl, config.json, TensorBoard events) in a workdir that may be remote.

A local workdir is a `pathlib.Path`, kept as given (relative stays relative), and its files are
written in place as always. A workdir URL (gs://bucket/run, s3://, az://, hf://) is an
`etils.epath.Path`. Object stores cannot append to an object or flush part of one, so the
growing files of a remote run are kept whole on this host and uploaded whole, at most every
`sync_secs` and at close: `open_append` for metrics.jsonl, `StagedDir` for TensorBoard's event
files. Checkpoints do not come here: orbax writes them through etils.epath and TensorStore.
"""

import math
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bertjax.errors import UserError

if TYPE_CHECKING:  # etils takes ~0.1 s to import: only when a URL is opened
    from etils import epath

# Google Cloud Storage allows about one update per second to one object, and a run can log
# many steps a second: uploads of a growing file are spaced by this much (TensorBoard's own
# flush interval). Whatever is left is uploaded at close.
SYNC_SECS = 30.0
_SCHEMES = ("gs", "s3", "az", "hf")  # the URL schemes etils.epath opens


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL such as gs://bucket/run; False for a local path."""
    return "://" in os.fspath(path)


def path(workdir: str | os.PathLike) -> "pathlib.Path | epath.Path":
    """The workdir (or a file in it) as a path object: a local path exactly as given, or an
    etils.epath.Path for a URL. Both have `/`, `open`, `exists`, `mkdir`, `read_text`,
    `write_text`, `iterdir`, `name`; never pass a URL through `pathlib.Path`, which turns
    gs://bucket into the local path gs:/bucket."""
    text = os.fspath(workdir)
    if not is_remote(text):
        return pathlib.Path(workdir)
    scheme = text.split("://", 1)[0]
    if scheme not in _SCHEMES:
        raise UserError(
            f"{text}: unsupported URL scheme {scheme}://; a workdir is a local path or one of "
            + ", ".join(f"{s}://" for s in _SCHEMES)
        )
    _check_backend(text, scheme)
    from etils import epath

    return epath.Path(text)


def _check_backend(url: str, scheme: str) -> None:
    """A clear error now, rather than an ImportError at the first write of a long run."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        return  # etils.epath then uses tf.io.gfile, which has its own gs:// and s3://
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as e:
        raise UserError(
            f"{url}: {scheme}:// is opened through fsspec, whose driver for it is not "
            f"installed ({e}); install it (gs://: pip install 'bertjax[gcs]', which is gcsfs; "
            "s3fs for s3://, adlfs for az://)"
        ) from None


def open_append(file: "pathlib.Path | epath.Path", *, sync_secs: float = SYNC_SECS):
    """A text file to append lines to, starting on a fresh line; close() it when done.

    Local: the file itself, opened for appending (each flush() reaches the disk). Remote: a
    `RewrittenTextFile` holding the object's current text plus what is written, uploaded
    whole. Either way a resumed run continues the same file, earlier lines kept.
    """
    if is_remote(file):
        return RewrittenTextFile(file, sync_secs=sync_secs)
    # A killed run may have left half a line: start ours on a fresh line.
    needs_newline = file.exists() and file.stat().st_size > 0 and _last_byte(file) != b"\n"
    f = open(file, "a", encoding="utf-8")
    if needs_newline:
        f.write("\n")
    return f


def write_atomic(file: "pathlib.Path | epath.Path", data: bytes) -> None:
    """Replaces `file` with `data` whole: a temporary file renamed over it (local), or one
    upload (an object store writes an object whole anyway)."""
    if is_remote(file):
        file.write_bytes(data)
        return
    tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, file)


def _last_byte(file: pathlib.Path) -> bytes:
    with open(file, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


class RewrittenTextFile:
    """A remote text file grown by `write` and uploaded whole (an object store has no append).

    `flush()` uploads when `sync_secs` have passed since the last upload (the first flush
    uploads at once), `sync()` uploads now, `close()` uploads what is pending. The text is
    kept in memory: fine for logs of a few MB (100k metrics lines).
    """

    def __init__(
        self,
        file: "epath.Path",
        *,
        sync_secs: float = SYNC_SECS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = file
        self._sync_secs = sync_secs
        self._clock = clock
        self._last_sync = -math.inf
        # Bytes, decoded here: epath's text mode would use the locale's encoding.
        text = file.read_bytes().decode("utf-8") if file.exists() else ""
        if text and not text.endswith("\n"):
            text += "\n"  # a copy of a killed local run may end in half a line
        self._chunks = [text]
        self._dirty = False
        self.closed = False

    def write(self, text: str) -> int:
        """Appends `text` (kept until the next upload)."""
        if self.closed:
            raise ValueError(f"write to {self.path} after close()")
        self._chunks.append(text)
        self._dirty = True
        return len(text)

    def flush(self) -> None:
        """Uploads if anything is new and the last upload is `sync_secs` old."""
        if self._dirty and self._clock() - self._last_sync >= self._sync_secs:
            self.sync()

    def sync(self) -> None:
        """Uploads the whole text now (one object write: readers never see half of it)."""
        text = "".join(self._chunks)
        self._chunks = [text]
        self.path.write_bytes(text.encode("utf-8"))
        self._dirty = False
        self._last_sync = self._clock()

    def close(self) -> None:
        """Uploads what is pending; later writes are an error (safe to call twice)."""
        if not self.closed and self._dirty:
            self.sync()
        self.closed = True


class StagedDir:
    """A local directory for a writer that only writes local files (tensorboardX), whose
    files end up in `target`.

    A local target is used directly (`local` is the target; sync() does nothing). A remote
    target gets a fresh temporary directory; sync() uploads the files that changed since the
    last upload, at most every `sync_secs` unless forced; close() uploads the rest and removes
    the temporary directory. Files already in the target (an earlier run's) are left alone.
    """

    def __init__(
        self,
        target: "pathlib.Path | epath.Path",
        *,
        sync_secs: float = SYNC_SECS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.target = target
        self.remote = is_remote(target)
        self._sync_secs = sync_secs
        self._clock = clock
        self._last_sync = -math.inf
        self._uploaded: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) uploaded
        if self.remote:
            self.local = pathlib.Path(tempfile.mkdtemp(prefix="bertjax-staging-"))
        else:
            self.local = pathlib.Path(target)
            self.local.mkdir(parents=True, exist_ok=True)

    def sync(self, *, force: bool = False) -> None:
        """Uploads the new or grown files (remote target; throttled unless `force`)."""
        if not self.remote or self.local is None:
            return
        if not force and self._clock() - self._last_sync < self._sync_secs:
            return
        self._last_sync = self._clock()
        for file in sorted(self.local.iterdir()):
            if not file.is_file():
                continue
            stat = file.stat()
            version = (stat.st_size, stat.st_mtime_ns)
            if self._uploaded.get(file.name) != version:
                self.target.mkdir(parents=True, exist_ok=True)
                # Bytes through epath: a cross-filesystem copy() would pick the local backend.
                (self.target / file.name).write_bytes(file.read_bytes())
                self._uploaded[file.name] = version

    def close(self) -> None:
        """Uploads what changed and removes the staging directory (safe to call twice)."""
        if not self.remote or self.local is None:
            return
        self.sync(force=True)
        shutil.rmtree(self.local, ignore_errors=True)
        self.local = None
