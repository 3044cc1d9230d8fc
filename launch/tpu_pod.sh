#!/usr/bin/env bash
# Cloud TPU VM slices (one host or a pod): create, set up, run `bertjax train` on every worker,
# follow the logs, stop, delete. On TPU VMs `jax.distributed.initialize()` finds the other
# workers by itself, so every worker runs the same command.
set -euo pipefail

PROG=tpu_pod.sh
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=xla_flags.sh
source "$REPO_DIR/launch/xla_flags.sh"

# Layout on every worker, relative to the login directory (gcloud ssh starts there).
REMOTE_SRC=bertjax
REMOTE_VENV=bertjax-venv
REMOTE_LOG=bertjax-train.log
REMOTE_PID=bertjax-train.pid
REMOTE_TARBALL=bertjax-src.tar.gz
UV_INSTALLER=https://astral.sh/uv/install.sh

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh COMMAND --name NAME --zone ZONE [--project PROJECT] [options]

Commands:
  create   create the TPU VM slice
             --accelerator-type TYPE   v4-8, v4-32, v5litepod-8, v5p-16, v6e-8, ... (required)
             --version RUNTIME         TPU software version (default by type: v2/v3/v4
                                       tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                                       v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
             --spot | --preemptible    cheaper capacity that can be taken back at any time
  setup    put this code on every worker and install it with jax[tpu] into ~/bertjax-venv
           (Python from uv, since the TPU images ship Python 3.10)
             --git URL [--ref REF]     clone URL (at REF) instead of copying this checkout
             --python-version V        Python for the venv (default 3.11)
  copy-data SRC DEST
           copy a prepared dataset from gs:// to every worker's disk (gcloud storage rsync);
           DEST relative to the home directory, e.g. data/wiki128
  run      start `bertjax train --config CONFIG --workdir WORKDIR TRAIN_ARGS...` on every
           worker in the background (nohup) from the home directory; output goes to
           ~/bertjax-train.log
             CONFIG WORKDIR [-- TRAIN_ARGS...]   CONFIG a packaged name (bert_base_phase1)
                                       or a .py path relative to the repository root;
                                       WORKDIR on gs://; data on gs:// or copied with
                                       copy-data (relative paths start at the home directory)
             --env KEY=VALUE           extra environment for the trainer (repeatable);
                                       LIBTPU_INIT_ARGS=... comes after the flags this
                                       script sets (launch/xla_flags.sh), so yours win
             --no-xla-flags            leave out the LIBTPU_INIT_ARGS this script sets
  logs     follow ~/bertjax-train.log of one worker
             --worker W                which worker (default 0)   --lines N   (default 100)
  stop     send SIGTERM to the trainer on every worker (it saves a checkpoint, then exits)
  delete   delete the slice        --yes   do not ask for confirmation

Options for every command:
  --name NAME  --zone ZONE  --project PROJECT (default: gcloud's configured project)
  --dry-run    print the commands that would run, one per line, and run nothing
  -h, --help   show this help

Example (a v4-8, data prepared on gs://):
  launch/tpu_pod.sh create --name bert --zone us-central2-b --accelerator-type v4-8 --spot
  launch/tpu_pod.sh setup  --name bert --zone us-central2-b
  launch/tpu_pod.sh copy-data --name bert --zone us-central2-b gs://my-bucket/data/wiki128 data/wiki128
  launch/tpu_pod.sh run    --name bert --zone us-central2-b \
      bert_base_phase1 gs://my-bucket/runs/phase1 -- --config.data.train_dir=data/wiki128
  launch/tpu_pod.sh logs   --name bert --zone us-central2-b
  launch/tpu_pod.sh delete --name bert --zone us-central2-b
EOF
}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf 'Run launch/tpu_pod.sh --help for usage.\n' >&2
  exit 2
}

# Runs a command, or with --dry-run prints it shell-quoted on one line.
run() {
  if ((dry_run)); then
    printf '%q' "$1"
    (($# == 1)) || printf ' %q' "${@:2}"
    printf '\n'
  else
    "$@"
  fi
}

# Shell-quotes its arguments into one string, for a command that runs on the workers.
quote() {
  printf '%q' "$1"
  (($# == 1)) || printf ' %q' "${@:2}"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

(($# >= 1)) || { usage >&2; exit 2; }
case $1 in
  -h | --help) usage; exit 0 ;;
  create | setup | copy-data | run | logs | stop | delete) subcommand=$1; shift ;;
  *) die "unknown command '$1'; expected one of create, setup, copy-data, run, logs, stop, delete." ;;
esac

# ---- arguments ----
name="" zone="" project="" dry_run=0 xla_flags=1
accelerator_type="" version="" capacity=""
git_url="" git_ref="" python_version=3.11
worker=0 lines=100 yes=0
env_vars=() positional=() train_args=()
while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --spot | --preemptible)
      [[ -z $capacity || $capacity == "$1" ]] || die "--spot and --preemptible exclude each other."
      capacity=$1; shift ;;
    --yes) yes=1; shift ;;
    --no-xla-flags) xla_flags=0; shift ;;
    --name | --zone | --project | --accelerator-type | --version | --git | --ref | \
      --python-version | --worker | --lines | --env)
      (($# >= 2)) || die "$1 needs a value."
      case $1 in
        --name) name=$2 ;;
        --zone) zone=$2 ;;
        --project) project=$2 ;;
        --accelerator-type) accelerator_type=$2 ;;
        --version) version=$2 ;;
        --git) git_url=$2 ;;
        --ref) git_ref=$2 ;;
        --python-version) python_version=$2 ;;
        --worker) worker=$2 ;;
        --lines) lines=$2 ;;
        --env)
          [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env takes KEY=VALUE, got '$2'."
          env_vars+=("$2") ;;
      esac
      shift 2
      ;;
    --) shift; train_args=("$@"); break ;;
    -*) die "unknown option '$1' for '$subcommand' (flags for bertjax train go after '--')." ;;
    *) positional+=("$1"); shift ;;
  esac
done

[[ -n $name ]] || die "--name NAME is required (the TPU VM's name)."
[[ -n $zone ]] || die "--zone ZONE is required (for example us-central2-b)."
if [[ $subcommand != run ]]; then
  ((${#train_args[@]} == 0)) || die "'$subcommand' takes no arguments after '--'."
fi
if [[ $subcommand != run && $subcommand != copy-data ]]; then
  ((${#positional[@]} == 0)) || die "'$subcommand' takes no positional arguments, got '${positional[0]}'."
fi
# Options that only make sense for one command are an error elsewhere, not silently ignored.
only_for() {
  local want=$1 flag=$2 value=$3
  [[ -z $value || $subcommand == "$want" ]] || die "$flag is an option of '$want', not of '$subcommand'."
}
only_for create --accelerator-type "$accelerator_type"
only_for create --version "$version"
only_for create "--spot/--preemptible" "$capacity"
only_for setup --git "$git_url"
only_for setup --ref "$git_ref"
only_for run --env "${env_vars[*]}"
((xla_flags)) || [[ $subcommand == run ]] || die "--no-xla-flags is an option of 'run', not of '$subcommand'."
[[ -z $git_ref || -n $git_url ]] || die "--ref needs --git URL."
is_uint "$worker" || die "--worker must be a worker number, got '$worker'."
is_uint "$lines" || die "--lines must be a whole number, got '$lines'."

tpu_flags=(--zone="$zone")
[[ -z $project ]] || tpu_flags+=(--project="$project")

# The same command, run by ssh on the given workers ("all" or a number).
on_workers() {
  local which=$1
  shift
  run gcloud compute tpus tpu-vm ssh "$name" "${tpu_flags[@]}" --worker="$which" --command "$*"
}

default_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default --version for accelerator type '$1'; pass --version" \
      "(see \`gcloud compute tpus tpu-vm versions list --zone $zone\`)." ;;
  esac
}

case $subcommand in
  create)
    [[ -n $accelerator_type ]] || die "create needs --accelerator-type (for example v4-8 or v5litepod-8)."
    [[ $accelerator_type =~ ^v[0-9][a-z]*-[0-9]+$ ]] ||
      die "--accelerator-type must look like v4-8 or v5litepod-16, got '$accelerator_type'."
    [[ -n $version ]] || version=$(default_version "$accelerator_type")
    cmd=(gcloud compute tpus tpu-vm create "$name" "${tpu_flags[@]}"
      --accelerator-type="$accelerator_type" --version="$version")
    [[ -z $capacity ]] || cmd+=("$capacity")
    run "${cmd[@]}"
    ;;

  setup)
    [[ $python_version =~ ^3\.[0-9]+$ ]] || die "--python-version must look like 3.11, got '$python_version'."
    install="command -v uv >/dev/null || curl -LsSf $UV_INSTALLER | sh"
    install+=" && export PATH=\$HOME/.local/bin:\$PATH"
    install+=" && { [ -x $REMOTE_VENV/bin/python ] || uv venv --python $python_version $REMOTE_VENV; }"
    install+=" && uv pip install --python $REMOTE_VENV/bin/python 'jax[tpu]' './${REMOTE_SRC}[gcs]'"
    if [[ -n $git_url ]]; then
      fetch="rm -rf $REMOTE_SRC && git clone --quiet $(quote "$git_url") $REMOTE_SRC"
      [[ -z $git_ref ]] || fetch+=" && git -C $REMOTE_SRC checkout --quiet $(quote "$git_ref")"
    else
      # Copy this checkout (without its venv, git history and caches) to every worker.
      tarball=${TMPDIR:-/tmp}/bertjax-src-$name.tar.gz
      run tar -czf "$tarball" --exclude=.venv --exclude=.git --exclude=__pycache__ \
        --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.ruff_cache -C "$REPO_DIR" .
      run gcloud compute tpus tpu-vm scp "$tarball" "$name:$REMOTE_TARBALL" "${tpu_flags[@]}" --worker=all
      fetch="rm -rf $REMOTE_SRC && mkdir $REMOTE_SRC && tar -xzf $REMOTE_TARBALL -C $REMOTE_SRC"
    fi
    on_workers all "set -e; $fetch && $install"
    ;;

  copy-data)
    ((${#positional[@]} == 2)) || die "copy-data expects SRC (gs://...) and DEST, got ${#positional[@]} argument(s)."
    src=${positional[0]} dest=${positional[1]}
    [[ $src == gs://* ]] || die "copy-data SRC must be a gs:// URL, got '$src'."
    [[ $dest != *://* ]] || die "copy-data DEST is a path on the workers' disks, got '$dest'."
    on_workers all "mkdir -p $(quote "$dest") && gcloud storage rsync --recursive $(quote "$src" "$dest")"
    ;;

  run)
    ((${#positional[@]} == 2)) ||
      die "run expects CONFIG and WORKDIR, got ${#positional[@]} positional argument(s); pass extra train flags after '--'."
    config=${positional[0]} workdir=${positional[1]}
    [[ $workdir == gs://* ]] ||
      die "WORKDIR must be on gs:// so that every worker writes the same checkpoints, got '$workdir'."
    [[ $config != /* ]] || die "CONFIG must be a packaged config name or a path relative to the repository root (it is read on the workers), got '$config'."
    # A packaged recipe (bert_base_phase1[:arg]) is found by name on the workers too; a file
    # path is read from the workers' checkout of the repository.
    [[ $config != */* && $config != *.py* ]] || config="$REMOTE_SRC/$config"
    # Our LIBTPU_INIT_ARGS first, then the user's (--env LIBTPU_INIT_ARGS=...): the last
    # value of a repeated flag wins.
    libtpu_args=()
    ((!xla_flags)) || libtpu_args=("${TPU_LIBTPU_INIT_ARGS[@]}")
    other_env=()
    for kv in ${env_vars[@]+"${env_vars[@]}"}; do
      if [[ $kv == LIBTPU_INIT_ARGS=* ]]; then
        libtpu_args+=("${kv#LIBTPU_INIT_ARGS=}")
      else
        other_env+=("$kv")
      fi
    done
    ((${#libtpu_args[@]} == 0)) ||
      other_env=("LIBTPU_INIT_ARGS=${libtpu_args[*]}" ${other_env[@]+"${other_env[@]}"})
    trainer=(nohup)
    ((${#other_env[@]} == 0)) || trainer+=(env "${other_env[@]}")
    trainer+=("$REMOTE_VENV/bin/bertjax" train --config "$config" --workdir "$workdir"
      "${train_args[@]}")
    # A TPU chip serves one process: refuse to start while an earlier run is still alive.
    check="if [ -f $REMOTE_PID ] && kill -0 \"\$(cat $REMOTE_PID)\" 2>/dev/null;"
    check+=" then echo \"\$(hostname): a run is still going (pid \$(cat $REMOTE_PID));"
    check+=" use 'tpu_pod.sh stop' first\" >&2; exit 1; fi"
    # $! is the trainer itself (a simple command run with &), which `stop` signals.
    start="$(quote "${trainer[@]}") >> $REMOTE_LOG 2>&1 < /dev/null &"
    start+=" echo \$! > $REMOTE_PID; echo \"\$(hostname): started pid \$!\""
    on_workers all "$check; $start"
    ;;

  logs)
    on_workers "$worker" "tail -n $lines -F $REMOTE_LOG"
    ;;

  stop)
    stop="if [ -f $REMOTE_PID ] && kill -TERM \"\$(cat $REMOTE_PID)\" 2>/dev/null;"
    stop+=" then echo \"\$(hostname): sent SIGTERM\"; else echo \"\$(hostname): no run\"; fi"
    on_workers all "$stop"
    ;;

  delete)
    cmd=(gcloud compute tpus tpu-vm delete "$name" "${tpu_flags[@]}")
    ((yes == 0)) || cmd+=(--quiet)
    run "${cmd[@]}"
    ;;
esac
