"""(b) A real 2-process run (2 processes x 4 CPU devices, joined by jax.distributed on
127.0.0.1) gives the same losses as one process with 8 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from bertjax.data.synthetic import synthetic_dataset
from bertjax.train import config as config_lib
from bertjax.train import loop

CONFIG = "bert_tiny"
TIMEOUT_S = 420

# What a worker runs: the `bertjax train` command line, parsed by the real parser, then the
# same calls as `commands.train.run`, printing the full-precision losses (metrics.jsonl
# rounds them).
WORKER = """
import json, sys
from bertjax import cli
from bertjax.train import config as config_lib, loop
from bertjax.train.distributed import initialize_distributed
args = cli.build_parser().parse_args(sys.argv[1:])
config = config_lib.load_config(args.config, args.config_overrides)
initialize_distributed(args.coordinator, args.num_processes, args.process_id)
history = loop.train(config, args.workdir)
print("LOSSES " + json.dumps([h["loss"] for h in history]), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(data_dir):
    # Dropout stays on: its masks come from the step-folded key, the same on any process count.
    return [
        f"data.train_dir={data_dir}",
        "train.steps=6",
        "optim.warmup_steps=1",
        "train.log_every=1",
        "train.eval_every=0",
        "train.global_batch_size=16",
        "model.num_hidden_layers=1",
    ]


def run_two_processes(data_dir, tmp_path):
    port = free_port()  # a fresh port per launch: a stale coordinator cannot answer
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    procs = []
    try:
        for i in range(2):
            cmd = [
                sys.executable,
                "-c",
                WORKER,
                "train",
                "--config",
                CONFIG,
                "--workdir",
                str(tmp_path / "run"),  # one workdir, as on a shared filesystem
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                *[f"--config.{o}" for o in overrides(data_dir)],
            ]
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            )
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:  # on a timeout or a failure, never leave a worker waiting for its peer
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
    return outputs


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_two_processes_match_one_process_with_8_devices(tmp_path):
    data_dir = synthetic_dataset(tmp_path / "data", 256, 32, vocab_size=512, shard_size=100)
    outputs = run_two_processes(data_dir, tmp_path)
    lines = [[ln for ln in out.splitlines() if ln.startswith("LOSSES ")] for out in outputs]
    assert all(len(x) == 1 for x in lines), outputs
    per_process = [json.loads(x[0].removeprefix("LOSSES ")) for x in lines]
    # Both processes see the same (global) losses; only process 0 writes metrics.jsonl.
    np.testing.assert_array_equal(per_process[0], per_process[1])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]  # not twice
    assert "mesh data=8, fsdp=1, tensor=1 over 8 cpu devices, 2 process(es)" in outputs[0]

    config = config_lib.load_config(CONFIG, overrides(data_dir))
    single = [h["loss"] for h in loop.train(config, tmp_path / "single")]  # this process: 8 devices
    assert len(single) == len(per_process[0]) == 6
    np.testing.assert_allclose(per_process[0], single, rtol=0, atol=1e-5)
