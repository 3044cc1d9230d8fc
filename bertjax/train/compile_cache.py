"""JAX's persistent compilation cache: where it lives, switching it on before the first compile,
and telling a compile that loaded from it from one that compiled afresh.

A restarted run (a pre-emption, a requeue, a second `bertjax train` with the same config)
then loads its compiled train step from disk instead of compiling it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from bertjax.errors import UserError

AUTO = "auto"  # the config value that picks `default_cache_dir`
_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_MISS_EVENT = "/jax/compilation_cache/cache_misses"


def user_cache_dir() -> str:
    """$XDG_CACHE_HOME/bertjax/jax_cache, else ~/.cache/bertjax/jax_cache."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "bertjax", "jax_cache")


def default_cache_dir(workdir, process_count: int) -> str:
    """The folder `auto` means: the user's cache directory for a single process; for several,
    WORKDIR/jax_cache, on the storage every process shares (JAX writes cache entries from
    process 0 only, so a per-host folder would stay empty on the other hosts)."""
    if process_count > 1:
        return f"{str(workdir).rstrip('/')}/jax_cache"
    return user_cache_dir()


# Values that switch the cache off besides "": what a user types for "off" would otherwise
# make a folder of that name in the current directory (./none is that folder).
OFF_WORDS = ("none", "null", "off", "false", "no")


def resolve(setting: str, workdir, process_count: int) -> str | None:
    """The cache folder of a config value: "" or one of OFF_WORDS = None (off), "auto" =
    `default_cache_dir`, anything else is the folder itself (a local path or a gs:// URL)."""
    if not setting or setting.strip().lower() in OFF_WORDS:
        return None
    if setting == AUTO:
        return default_cache_dir(workdir, process_count)
    return os.path.expanduser(setting) if "://" not in setting else setting


def configure(cache_dir: str | None) -> None:
    """Points JAX's persistent compilation cache at `cache_dir` (None: off), for every compile
    of this process from now on. Every program is cached, however small or quick to compile
    (JAX's defaults skip programs compiled in under a second, which is most of them on CPU)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    enabled = cache_dir is not None
    if (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache) == (
        cache_dir,
        enabled,
    ):
        return
    # JAX opens its cache once per process, at the first compile; another folder (a second run
    # in the same process) needs a reset to be opened.
    compilation_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", enabled)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    if enabled:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        # -1: no minimum size (0 would let JAX pick one for the file system).
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def current_dir() -> str | None:
    """The folder JAX's persistent cache uses now (None: off)."""
    import jax

    enabled = jax.config.jax_enable_compilation_cache
    return jax.config.jax_compilation_cache_dir if enabled else None


def enable(setting: str, workdir, process_count: int, *, key: str) -> str | None:
    """Resolves a config value (`resolve`), creates a local folder, switches the cache on
    (`configure`); returns the folder (None: off). `key` names the setting in errors."""
    cache_dir = resolve(setting, workdir, process_count)
    if cache_dir is not None and "://" not in cache_dir:
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"{key}={setting!r}: cannot create {cache_dir} ({e.strerror}); give a writable "
                "folder, or '' to switch the compilation cache off"
            ) from None
    configure(cache_dir)
    return cache_dir


@dataclasses.dataclass
class CacheEvents:
    """Persistent-cache lookups that happened inside `watch()`."""

    hits: int = 0
    misses: int = 0

    def describe(self, cache_dir: str | None) -> str:
        """A few words for the log: loaded from the cache, written to it, or no cache."""
        if cache_dir is None:
            return "no compilation cache"
        if self.hits and not self.misses:
            return f"loaded from the compilation cache {cache_dir}"
        if self.hits:
            return f"{self.hits} of {self.hits + self.misses} programs from the cache {cache_dir}"
        return f"compiled, then written to the compilation cache {cache_dir}"


@contextlib.contextmanager
def watch():
    """Counts the persistent-cache hits and misses of the compiles inside the block (JAX's
    monitoring events), yielding a `CacheEvents` that fills as they happen."""
    import jax

    events = CacheEvents()

    def listener(event: str, **_) -> None:
        if event == _HIT_EVENT:
            events.hits += 1
        elif event == _MISS_EVENT:
            events.misses += 1

    jax.monitoring.register_event_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_listener(listener)
