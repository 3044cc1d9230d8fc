# shellcheck shell=bash
# The XLA flags bertjax's launchers set for data-parallel and FSDP training, sourced by
# local.sh, tpu_pod.sh and gke/render.sh. slurm.sbatch holds a copy of GPU_XLA_FLAGS (Slurm
# runs a copy of the batch script, away from this folder); tests/test_launch.py checks that
# the two agree.
#
# A user's own flags go after ours (XLA_FLAGS in the launcher's environment; --env
# LIBTPU_INIT_ARGS=... for tpu_pod.sh; --xla-flags for gke/render.sh), and the last value of a
# repeated flag wins; every launcher's --no-xla-flags leaves ours out.

# GPU: XLA_FLAGS. Sources: JAX's "GPU performance tips"
# (https://docs.jax.dev/en/latest/gpu_performance_tips.html), NVIDIA JAX-Toolbox's
# rosetta/docs/GPU_performance.md, and the values of MaxText's A3 (H100) configs
# (src/maxtext/configs/gpu/a3/llama_2_7b/1vm.sh). Every flag exists in jaxlib 0.10 (a test
# starts JAX with them all: XLA refuses an unknown flag).
# shellcheck disable=SC2034  # used by the scripts that source this file
GPU_XLA_FLAGS=(
  # Schedule the collectives (the gradient all-reduce of data parallelism, FSDP's parameter
  # all-gathers and gradient reduce-scatters) to overlap with compute instead of between it.
  --xla_gpu_enable_latency_hiding_scheduler=true
  # Run those collectives on the highest-priority CUDA stream, so compute kernels queued
  # before them do not delay the communication the next layer waits for.
  --xla_gpu_enable_highest_priority_async_stream=true
  # Combine the ~200 per-tensor gradient all-reduces of a BERT step into buckets of up to
  # 128 MiB: a few large NCCL calls use the links far better than many small ones.
  --xla_gpu_all_reduce_combine_threshold_bytes=134217728
  # FSDP: gather (and reduce-scatter) at least a whole layer at once (BERT-large: 12.6M
  # parameters, 50 MB in float32), as the JAX guide advises for Transformer layers.
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864
  # In a loop over layers (scanned layers), start the next iteration's all-gather and this
  # one's reduce-scatter / all-reduce early, under the current layer's compute.
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
)

# TPU: LIBTPU_INIT_ARGS (read by libtpu, which is not installed where the tests run). Source:
# the flag set of every MaxText v5e and v5p training config (src/maxtext/configs/tpu/v5e/*.sh,
# v5p/*.sh), i.e. DATA_PARALLEL_OVERLAP + CF_FOR_ALL_GATHER of MaxText's
# benchmarks/xla_flags_library.py, described in src/maxtext/configs/README.md.
# shellcheck disable=SC2034
TPU_LIBTPU_INIT_ARGS=(
  # Data parallelism: overlap the gradient all-reduce (also across slices, over the data
  # center network) with the backward pass, including gradients of different sizes.
  --xla_tpu_enable_data_parallel_all_reduce_opt=true
  --xla_tpu_data_parallel_opt_different_sized_ops=true
  # FSDP: run the parameter all-gathers asynchronously and fuse them into the compute that
  # runs meanwhile ("continuation fusion"), on the same TensorCore.
  --xla_tpu_enable_async_collective_fusion=true
  --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true
  --xla_tpu_enable_async_collective_fusion_multiple_steps=true
  --xla_tpu_overlap_compute_collective_tc=true
  --xla_enable_async_all_gather=true
)
