"""Joining the processes of a multi-host run (`jax.distributed`), detected from the cluster,
and noticing when one of them is lost."""

import atexit
import os
import sys
import threading
import time
from pathlib import Path

from bertjax.errors import UserError


def detect_cluster() -> str | None:
    """The multi-process environment this process runs in, if any (before touching JAX)."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if (
        "SLURM_JOB_ID" in env
        and "SLURM_STEP_NODELIST" in env
        and int(env.get("SLURM_NTASKS", 1)) > 1
    ):
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", 1)) > 1:
        return "open-mpi"
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
    if "," in hosts or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu-pod"
    import importlib.util  # a Cloud TPU VM: libtpu installed and TPU chips present

    has_chips = Path("/dev/accel0").exists() or Path("/dev/vfio/0").exists()
    if has_chips and importlib.util.find_spec("libtpu") is not None:
        return "tpu-vm"
    return None


def initialize_distributed(
    coordinator=None, num_processes=None, process_id=None, *, peer_timeout_s: float = 0
) -> None:
    """Joins the processes of a multi-host run; must come before any other JAX call.

    Explicit flags win; otherwise the environment is detected (`detect_cluster`) and JAX
    reads the rest from it. A lone process on a workstation does nothing. With several
    processes and `peer_timeout_s` > 0, a `PeerWatchdog` ends this process (exit status
    EXIT_LOST_PEER) when another one has been silent that long.
    """
    import jax

    explicit = [coordinator, num_processes, process_id]
    kwargs = (
        {"heartbeat_timeout_seconds": runtime_heartbeat_s(peer_timeout_s)}
        if (peer_timeout_s)
        else {}
    )
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise UserError("--coordinator, --num-processes and --process-id go together")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process-id={process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            **kwargs,
        )
    else:
        cluster = detect_cluster()
        if cluster is None:
            return
        print(f"bertjax: {cluster} environment detected, joining its processes", flush=True)
        jax.distributed.initialize(**kwargs)
    if peer_timeout_s and jax.process_count() > 1:
        PeerWatchdog(peer_timeout_s).start()


EXIT_LOST_PEER = 3  # this process stopped because another one of the run was lost
DEFAULT_PEER_TIMEOUT_S = 120  # train.peer_timeout_s's default, and fine-tuning's


def runtime_heartbeat_s(peer_timeout_s: float) -> int:
    """The distributed runtime's heartbeat timeout for our `peer_timeout_s`, so that ours
    always speaks first: the runtime aborts every process with a message that names nobody,
    and it does so well before its nominal timeout (it counts from the lost process's last
    heartbeat, sent at intervals of a good part of the timeout: measured at 0.78-0.98 of a
    20 s timeout, and 114 s of a 180 s one). Twice ours and a minute keeps it behind."""
    return int(2 * peer_timeout_s) + 60


_KEY = "bertjax/heartbeat/"


class PeerWatchdog:
    """Heartbeats through the distributed runtime's key-value store, in a daemon thread: each
    process bumps its own counter every `interval_s`; when another process's counter has not
    moved for `timeout_s` (killed, hung, its host gone), or it ended with an error, this
    process says which one and exits with EXIT_LOST_PEER instead of waiting forever in the
    next collective. A process that finishes normally says so and is no longer watched.
    """

    def __init__(self, timeout_s: float, interval_s: float = 1.0):
        import jax
        from jax._src import distributed

        self._client = distributed.global_state.client
        self._me, self._n = jax.process_index(), jax.process_count()
        self._timeout_s, self._interval_s = float(timeout_s), float(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bertjax-peer-watchdog", daemon=True)

    def start(self) -> "PeerWatchdog":
        """Starts watching; at interpreter exit this process tells the others how it ended."""
        self._thread.start()
        atexit.register(self._at_exit)  # before JAX's own shutdown (atexit runs in reverse)
        global _ACTIVE
        _ACTIVE = self
        return self

    def finish(self) -> None:
        """Called on a normal end: the others stop watching this process."""
        self._say("done")

    def _at_exit(self) -> None:
        self._stop.set()
        self._say("exited")  # ignored by the others when "done" was said first

    def _say(self, state: str) -> None:
        if self._stop.is_set() and state == "done":
            return
        try:
            current = self._client.key_value_try_get(_KEY + str(self._me))
        except Exception:
            current = ""
        if current != "done":
            try:
                self._client.key_value_set(_KEY + str(self._me), state, allow_overwrite=True)
            except Exception:
                pass  # the coordinator is gone: the others notice that themselves
        if state == "done":
            self._stop.set()

    def _lost(self, process: int, why: str) -> None:
        print(
            f"bertjax: error: lost process {process} of {self._n} ({why}); this process "
            f"(process {self._me}) stops too. Rerun the same command on every host: the run "
            "resumes from its last checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_LOST_PEER)

    def _run(self) -> None:
        others = [p for p in range(self._n) if p != self._me]
        seen = {p: (None, time.monotonic()) for p in others}  # last value, when it changed
        last_contact, beat = time.monotonic(), 0
        while not self._stop.wait(self._interval_s):
            beat += 1
            now = time.monotonic()
            try:
                self._client.key_value_set(_KEY + str(self._me), str(beat), allow_overwrite=True)
                values = {}
                for p in others:
                    try:
                        values[p] = self._client.key_value_try_get(_KEY + str(p))
                    except Exception:  # not written yet: the peer is still starting
                        values[p] = None
                last_contact = now
            except Exception as e:
                if now - last_contact > self._timeout_s:
                    self._lost(
                        0,
                        f"the coordinator has not answered for {self._timeout_s:.0f} "
                        f"s: {str(e)[:120]}",
                    )
                continue
            if self._stop.is_set():
                return
            for p in list(others):
                value = values[p]
                if value == "done":
                    others.remove(p)
                elif value == "exited":
                    self._lost(p, "it ended with an error")
                elif value != seen[p][0]:
                    seen[p] = (value, now)
                elif now - seen[p][1] > self._timeout_s:
                    self._lost(p, f"no heartbeat for {self._timeout_s:.0f} s")


_ACTIVE: PeerWatchdog | None = None


def finish() -> None:
    """Tells the other processes (if watched) that this one ended normally."""
    if _ACTIVE is not None:
        _ACTIVE.finish()
