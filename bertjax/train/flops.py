"""Model FLOPs of a BERT training step, and the peak that model-FLOPs utilisation (MFU) divides
them by: the published dense bf16 peak of a known accelerator (so that our MFU compares with
MaxText's and NVIDIA's), or, on a CPU, this machine's measured matmul rate.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

# Dense (no structured sparsity) bf16 peak FLOP/s of one JAX device, by `Device.device_kind`;
# the first matching pattern wins. TPU v4 and v5p chips are one JAX device each (their two
# TensorCores act as one "megacore"); v5e and v6e chips have one core. NVIDIA's datasheets
# print bf16 Tensor Core throughput "with sparsity", twice the dense figure used here.
CHIP_PEAKS: tuple[tuple[str, float], ...] = (
    # https://cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16 per chip
    (r"^TPU v4$", 275e12),
    # https://cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16 per chip ("TPU v5 lite" in JAX)
    (r"^TPU v5( lite|e)$", 197e12),
    # https://cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16 per chip ("TPU v5" in JAX)
    (r"^TPU v5p?$", 459e12),
    # https://cloud.google.com/tpu/docs/v6e (Trillium): 918 TFLOPs bf16 ("TPU v6 lite" in JAX)
    (r"^TPU v6( lite|e)$", 918e12),
    # NVIDIA A100 datasheet: bf16 Tensor Core 312 TFLOPS dense (624 sparse), SXM and PCIe
    (r"A100", 312e12),
    # NVIDIA H100 datasheet: bf16 1,513 TFLOPS sparse (PCIe), 1,671 (NVL), 1,979 (SXM)
    (r"H100.*PCIe", 756e12),
    (r"H100 NVL", 835e12),
    (r"H100", 989e12),
    # NVIDIA H200 datasheet: bf16 1,671 TFLOPS sparse (NVL), 1,979 (SXM)
    (r"H200 NVL", 835e12),
    (r"H200", 989e12),
    # NVIDIA HGX B200 datasheet: bf16 36 PFLOPS sparse for 8 GPUs, i.e. 2.25 PFLOPS dense each
    (r"B200", 2.25e15),
)


GIB = 2**30
# High-bandwidth memory of one chip, by `Device.device_kind` as in CHIP_PEAKS (TPUs only: what
# `bertjax compile` checks a program against). Google's pages print GB where the memory is
# GiB: the TPU compiler of libtpu 0.0.42 reports 15.75 GiB of a v5e usable, 30.75 of a v4,
# 95.74 of a v5p and 31.25 of a v6e (its out-of-memory error at compile time), a little under
# 16, 32, 96 and 32 GiB.
CHIP_HBM: tuple[tuple[str, int], ...] = (
    # https://cloud.google.com/tpu/docs/v4: "HBM2 capacity and bandwidth: 32 GiB, 1200 GBps"
    (r"^TPU v4$", 32 * GIB),
    # https://cloud.google.com/tpu/docs/v5e: "HBM2 capacity and bandwidth: 16 GB, 819 GBps"
    (r"^TPU v5( lite|e)$", 16 * GIB),
    # https://cloud.google.com/tpu/docs/v5p: "HBM2e capacity and bandwidth: 95 GB, 2765 GBps"
    (r"^TPU v5p?$", 95 * GIB),
    # https://cloud.google.com/tpu/docs/v6e: "HBM capacity per chip: 32 GB"
    (r"^TPU v6( lite|e)$", 32 * GIB),
)


def chip_hbm(device_kind: str) -> int | None:
    """The HBM bytes of one chip of this kind, None if not in CHIP_HBM."""
    for pattern, hbm in CHIP_HBM:
        if re.search(pattern, device_kind):
            return hbm
    return None


def model_flops_per_step(cfg, batch: int, seq_len: int, predictions: int) -> float:
    """Training FLOPs of one step (forward + backward = 3x forward), counting matmuls only:
    6 x (non-embedding parameters) x tokens, plus attention scores and mixing
    (12 x layers x batch x L^2 x hidden), plus the tied MLM decoder at the masked positions
    (6 x hidden x vocab x predictions). Embedding lookups are gathers, not matmuls."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    per_layer = 4 * h * h + 2 * h * cfg.intermediate_size  # q, k, v, out; the two FF matmuls
    dense = layers * per_layer + h * h + h * h + 2 * h  # + pooler, MLM transform, NSP head
    tokens = batch * seq_len
    attention = 12 * layers * batch * seq_len * seq_len * h
    decoder = 6 * h * cfg.vocab_size * batch * predictions
    return 6 * dense * tokens + attention + decoder


def cls_only_flops_saved(cfg, rows: int, seq_len: int) -> float:
    """Training FLOPs (as model_flops_per_step counts them) that a model whose last layer runs
    at [CLS] alone (BertModel's cls_only) does not do over `rows` rows of `seq_len`: that
    layer's query, output and feed-forward matmuls and its attention at the other positions
    (its keys and values still run at every position)."""
    h = cfg.hidden_size
    skipped = rows * (seq_len - 1)
    dense = 6 * (2 * h * h + 2 * h * cfg.intermediate_size) * skipped
    attention = 12 * rows * (seq_len * seq_len - seq_len) * h
    return dense + attention


def chip_peak(device_kind: str) -> float | None:
    """The dense bf16 peak FLOP/s of one device of this kind, None if not in CHIP_PEAKS."""
    for pattern, peak in CHIP_PEAKS:
        if re.search(pattern, device_kind):
            return peak
    return None


def matmul_flops(device, dtype: str = "float32", n: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of a jitted [n, n] @ [n, n] matmul on one device, the best of `repeats` short runs
    (after a compile-and-warm-up run; on a shared machine the fastest run is the least
    disturbed one). On a CPU one device's matmul already uses every core: XLA's CPU devices
    share one thread pool, so this is the whole machine's rate."""
    import jax
    import jax.numpy as jnp

    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype)), device)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


@dataclasses.dataclass(frozen=True)
class Peak:
    """The denominator of MFU: FLOP/s of all devices together, and what that number is."""

    flops_per_s: float
    denominator: str  # e.g. "dense bf16 peak of 8 x NVIDIA H100 80GB HBM3 (989 TFLOP/s each)"
    measured: bool  # True: timed on this machine; False: a published figure


def device_peak(devices, local_device=None) -> Peak:
    """The MFU denominator of a run on `devices` (every device of every process): the table's
    dense bf16 peak for a known accelerator; on a CPU, the measured float32 matmul rate of
    this machine; for an accelerator not in the table, its measured bf16 matmul rate per
    device (timed on `local_device`, default devices[0]) times the number of devices."""
    kind, platform, count = devices[0].device_kind, devices[0].platform, len(devices)
    per_device = chip_peak(kind)
    if per_device is not None:
        return Peak(
            per_device * count,
            f"dense bf16 peak of {count} x {kind} ({per_device / 1e12:g} TFLOP/s each, published)",
            measured=False,
        )
    local_device = local_device or devices[0]
    if platform == "cpu":
        rate = matmul_flops(local_device, "float32")
        return Peak(
            rate,
            f"measured float32 matmul peak of this CPU ({rate / 1e9:.1f} GFLOP/s, all cores)",
            measured=True,
        )
    rate = matmul_flops(local_device, "bfloat16")
    return Peak(
        rate * count,
        f"measured bf16 matmul peak of {count} x {kind} "
        f"({rate / 1e12:.1f} TFLOP/s each; not in bertjax's table of chips)",
        measured=True,
    )
