"""Joining the processes of a multi-host run (`jax.distributed`), detected from the cluster."""

import os
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


def initialize_distributed(coordinator=None, num_processes=None, process_id=None) -> None:
    """Joins the processes of a multi-host run; must come before any other JAX call.

    Explicit flags win; otherwise the environment is detected (`detect_cluster`) and JAX
    reads the rest from it. A lone process on a workstation does nothing.
    """
    import jax

    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise UserError("--coordinator, --num-processes and --process-id go together")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process-id={process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
        return
    cluster = detect_cluster()
    if cluster is not None:
        print(f"bertjax: {cluster} environment detected, joining its processes", flush=True)
        jax.distributed.initialize()
