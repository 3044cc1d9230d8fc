"""No silent fall-back to the CPU (train/accelerator.py): a machine whose TPU or GPU JAX did not
bring up is refused at start-up by `bertjax train` and `bertjax finetune`, naming what JAX's
backend said; JAX_PLATFORMS=cpu (or no accelerator attached) runs as before.

This host has no accelerator, so the machine's side (TPU chips on the PCI bus, an NVIDIA
device file) is given as Facts; what JAX said when its TPU backend failed is real where
libtpu is installed (the test extra installs it): a JAX process started without
JAX_PLATFORMS tries libtpu, fails for want of a TPU, and falls back to the CPU, exactly the
fall-back a TPU VM with a broken TPU would take."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from bertjax import cli
from bertjax.train import accelerator

CPU_FALLBACK = accelerator.Facts(
    backend="cpu",
    platforms_chosen=False,
    tpu_chips=0,
    tpu_version="",
    nvidia_gpu=False,
    backend_errors={},
)


@pytest.mark.parametrize(
    "change, message",
    [
        ({}, None),  # no accelerator attached: the CPU is all there is
        ({"platforms_chosen": True, "tpu_chips": 4}, None),  # JAX_PLATFORMS=cpu: asked for
        ({"backend": "tpu", "tpu_chips": 4}, None),  # the TPU is in use
        (
            {"tpu_chips": 4, "tpu_version": "v5p", "backend_errors": {"tpu": "TPU in use\nx"}},
            "this machine has 4 TPU v5p chip(s) but JAX runs on its CPU (JAX's tpu backend "
            "failed: TPU in use)",
        ),
        (
            {"tpu_chips": 8},
            "this machine has 8 TPU chip(s) but JAX runs on its CPU (no tpu backend is "
            "installed: pip install 'bertjax[tpu]')",
        ),
        (
            {"nvidia_gpu": True, "backend_errors": {"cuda": "CUDA driver too old"}},
            "this machine has an NVIDIA GPU but JAX runs on its CPU (JAX's cuda backend "
            "failed: CUDA driver too old)",
        ),
        # A CPU-only jaxlib on a workstation with a GPU (`make demo`'s install): JAX warns
        # of the fall-back itself, and the CPU is what was installed.
        ({"nvidia_gpu": True}, None),
        ({"backend": "gpu", "nvidia_gpu": True}, None),
    ],
    ids=[
        "cpu-only",
        "cpu-chosen",
        "tpu-in-use",
        "tpu-failed",
        "no-libtpu",
        "cuda-failed",
        "cpu-jaxlib-on-a-gpu-machine",
        "gpu",
    ],  # fmt: skip
)
def test_an_accelerator_jax_did_not_bring_up_is_named(change, message):
    assert accelerator.unused_accelerator(dataclasses.replace(CPU_FALLBACK, **change)) == message


def test_the_facts_hold_what_jax_said_when_its_tpu_backend_failed():
    """A fresh process without JAX_PLATFORMS: JAX falls back to the CPU; with libtpu installed
    and no TPU here its tpu backend failed, and the sentence for a machine with chips quotes
    that failure's first line."""
    code = (
        "import dataclasses, json; from bertjax.train import accelerator as a; "
        "f = a.facts(); print(json.dumps(dataclasses.asdict(f)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = accelerator.Facts(**json.loads(proc.stdout.strip().splitlines()[-1]))
    assert (facts.backend, facts.platforms_chosen, facts.tpu_chips) == ("cpu", False, 0)
    assert accelerator.unused_accelerator(facts) is None  # nothing attached: no complaint
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return  # without libtpu JAX never tries a TPU backend: nothing failed to quote
    assert "tpu" in facts.backend_errors, facts.backend_errors
    on_a_tpu_vm = dataclasses.replace(facts, tpu_chips=4, tpu_version="v5e")
    first_line = facts.backend_errors["tpu"].strip().splitlines()[0]
    assert accelerator.unused_accelerator(on_a_tpu_vm) == (
        f"this machine has 4 TPU v5e chip(s) but JAX runs on its CPU (JAX's tpu backend "
        f"failed: {first_line})"
    )


@pytest.fixture
def tpu_machine_on_cpu(monkeypatch):
    """This process, as on a TPU VM whose TPU JAX did not bring up."""
    facts = dataclasses.replace(
        CPU_FALLBACK, tpu_chips=4, tpu_version="v4", backend_errors={"tpu": "TPU busy"}
    )
    monkeypatch.setattr(accelerator, "facts", lambda: facts)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "bert_tiny", "--config.data.train_dir=/nonexistent"],
        ["finetune", "--task", "rte", "--init", "/nonexistent", "--data", "/nonexistent"],
    ],
    ids=["train", "finetune"],
)
def test_train_and_finetune_refuse_the_fall_back_before_anything(
    tpu_machine_on_cpu, tmp_path, capsys, argv
):
    """The check runs first: one line, exit 2, nothing written in the workdir."""
    code = cli.main([*argv, "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert (
        "this machine has 4 TPU v4 chip(s) but JAX runs on its CPU (JAX's tpu backend failed: "
        "TPU busy): fix the accelerator, or set JAX_PLATFORMS=cpu to run on the CPU anyway"
    ) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
