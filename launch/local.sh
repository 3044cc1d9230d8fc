#!/usr/bin/env bash
# Runs `bertjax train` on this machine: one process, or N processes joined by jax.distributed.
#
# With --processes N > 1, every process gets `--coordinator 127.0.0.1:PORT --num-processes N
# --process-id I`, exactly as the hosts of a pod would, so multi-host code paths can be tested
# on one machine (CPU with fake devices, or GPUs split between processes).
set -euo pipefail

PROG=local.sh
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=xla_flags.sh
source "$REPO_DIR/launch/xla_flags.sh"

usage() {
  cat <<EOF
Usage: launch/local.sh [options] CONFIG WORKDIR [-- TRAIN_ARGS...]

Runs \`bertjax train --config CONFIG --workdir WORKDIR TRAIN_ARGS...\` on this machine.
Logs go to WORKDIR/logs/process_I.log; process 0's output is also shown here. If one
process fails, the others are stopped and this script exits with that process's status.

Options:
  --processes N          number of local processes (default 1); N > 1 joins them through
                         jax.distributed with a coordinator on 127.0.0.1
  --port PORT            coordinator port (default: a free port)
  --cpu-devices D        run on CPU with D devices per process (sets JAX_PLATFORMS=cpu and
                         XLA_FLAGS=--xla_force_host_platform_device_count=D)
  --gpus-per-process G   give process I the GPUs I*G .. I*G+G-1 via CUDA_VISIBLE_DEVICES
                         (indices into CUDA_VISIBLE_DEVICES when it is already set)
  --no-xla-flags         leave out the XLA_FLAGS this script sets for GPU training
                         (launch/xla_flags.sh: latency-hiding scheduler, collective
                         combining); without it, yours from the environment come after
                         ours and win. Not set with --cpu-devices.
  --log-dir DIR          where the per-process logs go (default WORKDIR/logs; required when
                         WORKDIR is a URL such as gs://...)
  --bertjax EXE          the bertjax executable (default: \$BERTJAX, else \`bertjax\` on PATH,
                         else $REPO_DIR/.venv/bin/bertjax)
  --python PY            run \`PY -m bertjax.cli\` instead of a bertjax executable
  --kill-grace SECONDS   after a failure, wait this long for SIGTERM before SIGKILL (default 20)
  --dry-run              print the commands that would run, one per line, and run nothing
  -h, --help             show this help

Examples:
  launch/local.sh bert_tiny /tmp/run -- --config.train.steps=100
  launch/local.sh --processes 2 --cpu-devices 4 bert_tiny /tmp/run2
  launch/local.sh --processes 2 --gpus-per-process 4 bert_base_phase1 /data/run
EOF
}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf 'Run launch/local.sh --help for usage.\n' >&2
  exit 2
}

# Prints a command shell-quoted on one line, followed by the literal shell text in $suffix.
print_cmd() {
  local suffix=$1
  shift
  printf '%q' "$1"
  shift
  (($# == 0)) || printf ' %q' "$@"
  printf '%s\n' "$suffix"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ---- arguments ----
processes=1 port="" cpu_devices="" gpus_per_process="" log_dir="" dry_run=0 xla_flags=1
bertjax_exe="" python_exe="" kill_grace=20
positional=() train_args=()
while (($#)); do
  # --opt=value is the same as --opt value.
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --no-xla-flags) xla_flags=0; shift ;;
    --processes | --port | --cpu-devices | --gpus-per-process | --log-dir | --bertjax | \
      --python | --kill-grace)
      (($# >= 2)) || die "$1 needs a value."
      case $1 in
        --processes) processes=$2 ;;
        --port) port=$2 ;;
        --cpu-devices) cpu_devices=$2 ;;
        --gpus-per-process) gpus_per_process=$2 ;;
        --log-dir) log_dir=$2 ;;
        --bertjax) bertjax_exe=$2 ;;
        --python) python_exe=$2 ;;
        --kill-grace) kill_grace=$2 ;;
      esac
      shift 2
      ;;
    --) shift; train_args=("$@"); break ;;
    -*) die "unknown option '$1' (flags for bertjax train go after '--')." ;;
    *) positional+=("$1"); shift ;;
  esac
done

((${#positional[@]} == 2)) ||
  die "expected CONFIG and WORKDIR, got ${#positional[@]} positional argument(s); pass extra train flags after '--'."
config=${positional[0]} workdir=${positional[1]}
{ is_uint "$processes" && ((processes >= 1)); } || die "--processes must be a positive integer, got '$processes'."
[[ -z $port ]] || { is_uint "$port" && ((port >= 1 && port <= 65535)); } ||
  die "--port must be a port number in 1..65535, got '$port'."
[[ -z $cpu_devices ]] || { is_uint "$cpu_devices" && ((cpu_devices >= 1)); } ||
  die "--cpu-devices must be a positive integer, got '$cpu_devices'."
[[ -z $gpus_per_process ]] || { is_uint "$gpus_per_process" && ((gpus_per_process >= 1)); } ||
  die "--gpus-per-process must be a positive integer, got '$gpus_per_process'."
[[ -z $cpu_devices || -z $gpus_per_process ]] ||
  die "--cpu-devices and --gpus-per-process exclude each other (CPU or GPUs, not both)."
[[ -z $port ]] || ((processes > 1)) || die "--port is only used with --processes N > 1."
is_uint "$kill_grace" || die "--kill-grace must be a whole number of seconds, got '$kill_grace'."
[[ -z $python_exe || -z $bertjax_exe ]] || die "--bertjax and --python exclude each other."

if [[ -z $log_dir ]]; then
  [[ $workdir != *://* ]] ||
    die "WORKDIR '$workdir' is a URL; pass --log-dir DIR for the local per-process logs."
  log_dir=$workdir/logs
fi

# ---- the executable ----
if [[ -n $python_exe ]]; then
  command -v "$python_exe" >/dev/null || die "--python '$python_exe' is not an executable."
  train_cmd=("$python_exe" -m bertjax.cli train)
else
  bertjax_exe=${bertjax_exe:-${BERTJAX:-}}
  if [[ -z $bertjax_exe ]]; then
    if command -v bertjax >/dev/null; then
      bertjax_exe=bertjax
    elif [[ -x $REPO_DIR/.venv/bin/bertjax ]]; then
      bertjax_exe=$REPO_DIR/.venv/bin/bertjax
    else
      die "no bertjax executable: not on PATH nor at $REPO_DIR/.venv/bin/bertjax; pass --bertjax EXE or set BERTJAX."
    fi
  fi
  command -v "$bertjax_exe" >/dev/null || die "bertjax executable '$bertjax_exe' not found."
  train_cmd=("$bertjax_exe" train)
fi
train_cmd+=(--config "$config" --workdir "$workdir")

# ---- GPUs: which physical devices each process sees ----
gpu_list=()
if [[ -n $gpus_per_process ]]; then
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -r -a gpu_list <<<"$CUDA_VISIBLE_DEVICES"
    ((processes * gpus_per_process <= ${#gpu_list[@]})) ||
      die "$processes processes x $gpus_per_process GPUs need $((processes * gpus_per_process)) GPUs, but CUDA_VISIBLE_DEVICES lists ${#gpu_list[@]}."
  else
    for ((g = 0; g < processes * gpus_per_process; g++)); do gpu_list+=("$g"); done
  fi
fi

# ---- coordinator port ----
if ((processes > 1)) && [[ -z $port ]]; then
  command -v python3 >/dev/null || die "python3 is needed to find a free port; pass --port PORT."
  # Binding port 0 lets the kernel choose a free port; it stays free until the coordinator binds it.
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

# The full command of process $1, into the array `cmd`.
build_cmd() {
  local i=$1 env_vars=()
  if [[ -n $cpu_devices ]]; then
    env_vars+=(JAX_PLATFORMS=cpu "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$cpu_devices")
  fi
  if [[ -n $gpus_per_process ]]; then
    local mine=("${gpu_list[@]:i*gpus_per_process:gpus_per_process}")
    env_vars+=("CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${mine[*]}")")
  fi
  # GPU flags (XLA ignores them on a CPU); the user's XLA_FLAGS last, so theirs win.
  if [[ -z $cpu_devices ]] && ((xla_flags)); then
    env_vars+=("XLA_FLAGS=${GPU_XLA_FLAGS[*]}${XLA_FLAGS:+ $XLA_FLAGS}")
  fi
  cmd=()
  ((${#env_vars[@]} == 0)) || cmd=(env "${env_vars[@]}")
  cmd+=("${train_cmd[@]}")
  if ((processes > 1)); then
    cmd+=(--coordinator "127.0.0.1:$port" --num-processes "$processes" --process-id "$i")
  fi
  cmd+=("${train_args[@]}")
}

log_file() { printf '%s/process_%d.log' "$log_dir" "$1"; }

if ((dry_run)); then
  print_cmd "" mkdir -p "$log_dir"
  for ((i = 0; i < processes; i++)); do
    build_cmd "$i"
    if ((i == 0)); then
      print_cmd " > >(tee $(printf '%q' "$(log_file 0)")) 2>&1 &" "${cmd[@]}"
    else
      print_cmd " > $(printf '%q' "$(log_file "$i")") 2>&1 &" "${cmd[@]}"
    fi
  done
  exit 0
fi

# ---- run and supervise ----
mkdir -p "$log_dir"
pids=()
stop_all() {
  # SIGTERM first, so trainers can save a checkpoint; SIGKILL whoever is still up after the grace
  # period (a process blocked in a collective with a dead peer never finishes on its own).
  local pid waited=0
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  while ((waited < kill_grace * 10)); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
    waited=$((waited + 1))
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
on_signal() {
  printf '%s: received %s, stopping all processes\n' "$PROG" "$1" >&2
  stop_all
  if [[ $1 == INT ]]; then exit 130; else exit 143; fi
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

for ((i = 0; i < processes; i++)); do
  build_cmd "$i"
  if ((i == 0)); then
    "${cmd[@]}" > >(tee "$(log_file 0)") 2>&1 &
  else
    "${cmd[@]}" >"$(log_file "$i")" 2>&1 &
  fi
  pids+=($!)
done
if ((processes > 1)); then
  printf '%s: started %d processes (coordinator 127.0.0.1:%s), logs in %s\n' \
    "$PROG" "$processes" "$port" "$log_dir" >&2
fi

# Poll rather than `wait -n`, which needs bash >= 4.3 (macOS ships 3.2).
running=$processes
done_flags=()
for ((i = 0; i < processes; i++)); do done_flags+=(0); done
while ((running > 0)); do
  for ((i = 0; i < processes; i++)); do
    ((done_flags[i] == 0)) || continue
    kill -0 "${pids[i]}" 2>/dev/null && continue
    rc=0
    wait "${pids[i]}" || rc=$?
    done_flags[i]=1
    running=$((running - 1))
    if ((rc != 0)); then
      printf '%s: process %d exited with status %d (log: %s); stopping the others\n' \
        "$PROG" "$i" "$rc" "$(log_file "$i")" >&2
      stop_all
      exit "$rc"
    fi
  done
  ((running == 0)) || sleep 0.2
done
