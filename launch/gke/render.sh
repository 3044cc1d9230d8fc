#!/usr/bin/env bash
# Renders launch/gke/jobset.yaml for one TPU slice or GPU node pool and applies it with kubectl.
set -euo pipefail

PROG=render.sh
TEMPLATE=$(dirname "${BASH_SOURCE[0]}")/jobset.yaml
# shellcheck source=../xla_flags.sh
source "$(dirname "${BASH_SOURCE[0]}")/../xla_flags.sh"

usage() {
  cat <<'EOF'
Usage: launch/gke/render.sh --name NAME --image IMAGE (TPU | GPU) [options] CONFIG WORKDIR
                            [-- TRAIN_ARGS...]

Renders the JobSet in launch/gke/jobset.yaml (one pod per host, each running
`bertjax train --config CONFIG --workdir WORKDIR --coordinator ... --process-id ...`)
and runs `kubectl apply -f -` on it. CONFIG is a path inside the image; WORKDIR a gs:// URL.

TPU slice:
  --tpu ACCELERATOR        GKE TPU type: tpu-v4-podslice, tpu-v5-lite-podslice,
                           tpu-v5p-slice, tpu-v6e-slice, ...
  --topology TOPOLOGY      slice topology, e.g. 2x2x2 (v4/v5p) or 4x4 (v5e/v6e)
  --chips-per-host N       TPU chips per VM (default 4; 8 for single-host v5e/v6e 2x4)
GPU node pool:
  --gpu ACCELERATOR        GKE GPU type, e.g. nvidia-h100-80gb, nvidia-a100-80gb, nvidia-l4
  --gpus-per-host N        GPUs per node (default 8)
  --hosts N                number of nodes (required for GPUs; for TPUs it follows from
                           the topology, and if given must agree with it)
Other options:
  --name NAME              JobSet name (lowercase letters, digits, '-'; at most 40 characters)
  --image IMAGE            container image with bertjax installed (`bertjax` on PATH)
  --port PORT              coordinator port (default 1234)
  --service-account SA     Kubernetes service account of the pods (default: default)
  --max-restarts N         JobSet restarts on failure, each resuming from the last checkpoint
                           (default 3)
  --xla-flags FLAGS        your XLA flags, after the ones this script sets (launch/xla_flags.sh)
                           so that yours win: LIBTPU_INIT_ARGS on TPU, XLA_FLAGS on GPU
  --no-xla-flags           leave out the flags this script sets
  --dry-run                print the rendered YAML (after a comment naming the command that
                           would apply it) and run nothing
  -h, --help               show this help

Example (a v5e slice of 4 hosts x 4 chips):
  launch/gke/render.sh --name bert-p1 --image us-docker.pkg.dev/my-proj/bertjax:latest \
      --tpu tpu-v5-lite-podslice --topology 4x4 \
      bert_base_phase1 gs://my-bucket/runs/p1 -- --config.train.steps=1000 \
      --config.optim.warmup_steps=100
EOF
}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf 'Run launch/gke/render.sh --help for usage.\n' >&2
  exit 2
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# The template's ${VAR} placeholders and their values (parallel arrays: bash 3.2 has no maps).
var_names=() var_values=()
set_var() { var_names+=("$1"); var_values+=("$2"); }

# A JSON (hence YAML double-quoted) string body: backslashes and quotes escaped. Control
# characters are rejected up front (see below), so this needs no error path of its own.
json_escape() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '%s' "$s"
}

# ---- arguments ----
name="" image="" tpu="" topology="" chips_per_host=4 gpu="" gpus_per_host=8 hosts=""
port=1234 service_account=default max_restarts=3 dry_run=0 xla_flags=1 user_xla_flags=""
positional=() train_args=()
while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --no-xla-flags) xla_flags=0; shift ;;
    --name | --image | --tpu | --topology | --chips-per-host | --gpu | --gpus-per-host | \
      --hosts | --port | --service-account | --max-restarts | --xla-flags)
      (($# >= 2)) || die "$1 needs a value."
      case $1 in
        --name) name=$2 ;;
        --image) image=$2 ;;
        --tpu) tpu=$2 ;;
        --topology) topology=$2 ;;
        --chips-per-host) chips_per_host=$2 ;;
        --gpu) gpu=$2 ;;
        --gpus-per-host) gpus_per_host=$2 ;;
        --hosts) hosts=$2 ;;
        --port) port=$2 ;;
        --service-account) service_account=$2 ;;
        --max-restarts) max_restarts=$2 ;;
        --xla-flags) user_xla_flags=$2 ;;
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
[[ $name =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
  die "--name must be 1-40 lowercase letters, digits or '-', starting with a letter, got '$name'."
[[ -n $image ]] || die "--image IMAGE is required (a container image with bertjax installed)."
[[ $image =~ ^[A-Za-z0-9._/:@-]+$ ]] || die "--image '$image' is not an image reference."
[[ $workdir == gs://* ]] ||
  die "WORKDIR must be a gs:// URL that every pod can write, got '$workdir'."
{ is_uint "$port" && ((port >= 1 && port <= 65535)); } || die "--port must be in 1..65535, got '$port'."
is_uint "$max_restarts" || die "--max-restarts must be a whole number, got '$max_restarts'."
[[ $service_account =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] ||
  die "--service-account '$service_account' is not a Kubernetes name."
[[ -z $hosts ]] || { is_uint "$hosts" && ((hosts >= 1)); } ||
  die "--hosts must be a positive integer, got '$hosts'."

# ---- accelerator: node selector, resource, hosts ----
if [[ -n $tpu && -n $gpu ]]; then
  die "--tpu and --gpu exclude each other."
elif [[ -n $tpu ]]; then
  [[ $tpu =~ ^tpu-[a-z0-9-]+$ ]] || die "--tpu must be a GKE TPU type such as tpu-v5-lite-podslice, got '$tpu'."
  [[ $topology =~ ^[0-9]+(x[0-9]+){1,2}$ ]] ||
    die "--topology must look like 2x4 or 2x2x2 for a TPU slice, got '${topology:-nothing}'."
  { is_uint "$chips_per_host" && ((chips_per_host >= 1)); } ||
    die "--chips-per-host must be a positive integer, got '$chips_per_host'."
  chips=1
  IFS=x read -r -a dims <<<"$topology"
  for d in "${dims[@]}"; do chips=$((chips * d)); done
  ((chips % chips_per_host == 0)) ||
    die "topology $topology has $chips chips, which $chips_per_host chips per host do not divide."
  tpu_hosts=$((chips / chips_per_host))
  [[ -z $hosts || $hosts == "$tpu_hosts" ]] ||
    die "--hosts $hosts disagrees with topology $topology at $chips_per_host chips per host ($tpu_hosts hosts)."
  hosts=$tpu_hosts
  set_var NODE_SELECTOR "{cloud.google.com/gke-tpu-accelerator: $tpu, cloud.google.com/gke-tpu-topology: $topology}"
  # The pods of one slice must all land in its node pool, and no other JobSet's pods there.
  set_var ANNOTATIONS "{alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool}"
  set_var ACCELERATOR_RESOURCE google.com/tpu
  set_var ACCELERATORS_PER_HOST "$chips_per_host"
  xla_env_name=LIBTPU_INIT_ARGS ours=("${TPU_LIBTPU_INIT_ARGS[@]}")
elif [[ -n $gpu ]]; then
  [[ $gpu =~ ^[a-z0-9-]+$ ]] || die "--gpu must be a GKE accelerator name such as nvidia-h100-80gb, got '$gpu'."
  [[ -n $hosts ]] || die "--hosts N is required with --gpu (the number of GPU nodes)."
  [[ -z $topology ]] || die "--topology is for TPU slices; with --gpu give --hosts."
  { is_uint "$gpus_per_host" && ((gpus_per_host >= 1)); } ||
    die "--gpus-per-host must be a positive integer, got '$gpus_per_host'."
  set_var NODE_SELECTOR "{cloud.google.com/gke-accelerator: $gpu}"
  set_var ANNOTATIONS "{}"
  set_var ACCELERATOR_RESOURCE nvidia.com/gpu
  set_var ACCELERATORS_PER_HOST "$gpus_per_host"
  xla_env_name=XLA_FLAGS ours=("${GPU_XLA_FLAGS[@]}")
else
  die "choose the accelerator: --tpu TYPE --topology AxB, or --gpu TYPE --hosts N."
fi

# ---- render ----
# Ours first, the user's --xla-flags last: the last value of a repeated flag wins.
xla_env_value=$user_xla_flags
((!xla_flags)) || xla_env_value="${ours[*]}${user_xla_flags:+ $user_xla_flags}"
for a in "$config" "$workdir" "$user_xla_flags" "${train_args[@]}"; do
  [[ $a != *[[:cntrl:]]* ]] || die "control characters (such as newlines) are not allowed in '$a'."
done
set_var NAME "$name"
set_var IMAGE "$image"
set_var CONFIG "$(json_escape "$config")"
set_var WORKDIR "$(json_escape "$workdir")"
set_var NUM_HOSTS "$hosts"
set_var COORDINATOR_PORT "$port"
set_var SERVICE_ACCOUNT "$service_account"
set_var MAX_RESTARTS "$max_restarts"
set_var XLA_ENV_NAME "$xla_env_name"
set_var XLA_ENV_VALUE "$(json_escape "$xla_env_value")"
train_list=""
for a in "${train_args[@]}"; do train_list+=", \"$(json_escape "$a")\""; done
set_var TRAIN_ARGS "$train_list"

[[ -f $TEMPLATE ]] || die "template $TEMPLATE is missing."
# Drop the template's header comment (it shows ${VAR} placeholders), keep everything from
# apiVersion on.
yaml=$(sed -n '/^apiVersion:/,$p' "$TEMPLATE")
for ((k = 0; k < ${#var_names[@]}; k++)); do
  # Quoted replacement: `&` in a value stays literal (bash 5.2 patsub_replacement).
  yaml=${yaml//"\${${var_names[k]}}"/"${var_values[k]}"}
done
if [[ $yaml =~ \$\{[A-Za-z_]+\} ]]; then
  die "template $TEMPLATE has a placeholder this script does not fill: ${BASH_REMATCH[0]}."
fi

if ((dry_run)); then
  printf '# %s\n%s\n' "kubectl apply -f -" "$yaml"
else
  printf '%s\n' "$yaml" | kubectl apply -f -
fi
