#!/usr/bin/env bash
# Runs bam_jax pre-training on every worker of a Cloud TPU VM (single host or pod slice).
#
# Usage:
#   launch/tpu_vm.sh [--create] [--skip-setup] [--detach] [--delete] -- \
#       --config=configs/imagenet.py:vit_small --workdir=gs://BUCKET/bam_vit_s16 [--config.X=Y ...]
#
# Steps, in order:
#   --create      create the TPU VM first (needs ACCELERATOR_TYPE and RUNTIME_VERSION). Without
#                 it the script creates nothing and expects TPU_NAME to exist.
#   (default)     copy this working tree (tracked and untracked files that git does not ignore)
#                 to REMOTE_DIR on every worker, create REMOTE_DIR/.venv there and install the
#                 package with JAX for TPU. --skip-setup skips the copy and the install.
#   (default)     run `python -m bam_jax.main --config.distributed.enabled=True ARGS` on all
#                 workers at once. Every argument after `--` is passed to bam_jax.main unchanged.
#                 --detach runs it under nohup (output in REMOTE_DIR/train.log on each worker) so
#                 the job survives a dropped ssh session.
#   --delete      delete the TPU VM after the run returns (not with --detach).
#
# Environment:
#   TPU_NAME          TPU VM name (required).
#   ZONE              zone of the TPU VM, e.g. us-central2-b (required).
#   PROJECT           Google Cloud project; default: gcloud's configured project.
#   ACCELERATOR_TYPE  for --create, e.g. v4-32 or v5p-64.
#   RUNTIME_VERSION   for --create, e.g. tpu-ubuntu2204-base.
#   SPOT              1 creates a Spot TPU VM with --create (default 0).
#   REMOTE_DIR        checkout directory on the workers (default: bam_jax, in the home directory).
#   JAX_TPU_SPEC      pip requirement for JAX with TPU support (default: jax[tpu] at the version
#                     pinned in pyproject.toml).
#   PYTHON            interpreter on the workers that creates the venv (default: python3; the
#                     package needs Python 3.11 or newer).
#
# The workdir should be a gs:// path that every worker can write: all processes write the same
# Orbax checkpoints, and process 0 writes the metrics and results. The TFDS data_dir should be on
# GCS too (--config.data.data_dir=gs://BUCKET/tensorflow_datasets); each host reads its own part
# of the split. Running the same command again resumes from the latest checkpoint.
#
# NOTE: written against the documented `gcloud compute tpus tpu-vm` commands; it has not been run
# against a real TPU VM from this repository's CI, which has no Google Cloud access.

set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

create=0
setup=1
detach=0
delete=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --create) create=1 ;;
    --skip-setup) setup=0 ;;
    --detach) detach=1 ;;
    --delete) delete=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "Unknown option $1; options go before '--', bam_jax.main arguments after it." >&2
       usage 2 ;;
  esac
  shift
done
main_args=("$@")

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the zone of the TPU VM, e.g. us-central2-b}"
REMOTE_DIR="${REMOTE_DIR:-bam_jax}"
PYTHON="${PYTHON:-python3}"
SPOT="${SPOT:-0}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jax_version="$(sed -n 's/^ *"jax==\([^"]*\)".*/\1/p' "$repo_root/pyproject.toml")"
JAX_TPU_SPEC="${JAX_TPU_SPEC:-jax[tpu]==${jax_version}}"

if ! printf '%s\n' "${main_args[@]}" | grep -q -- '^--config='; then
  echo "Missing --config=configs/NAME.py after '--'." >&2
  exit 2
fi
if ! printf '%s\n' "${main_args[@]}" | grep -q -- '^--workdir='; then
  echo "Missing --workdir=gs://BUCKET/DIR after '--'." >&2
  exit 2
fi
if [[ $delete == 1 && $detach == 1 ]]; then
  echo "--delete and --detach cannot be combined: the VM would be deleted while training." >&2
  exit 2
fi

gcloud_flags=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then
  gcloud_flags+=(--project="$PROJECT")
fi

# Runs one shell command on every worker of the TPU VM at the same time.
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=all --command="$1"
}

if [[ $create == 1 ]]; then
  : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE for --create, e.g. v4-32}"
  : "${RUNTIME_VERSION:?set RUNTIME_VERSION for --create, e.g. tpu-ubuntu2204-base}"
  create_flags=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ $SPOT == 1 ]]; then
    create_flags+=(--spot)
  fi
  echo "Creating TPU VM $TPU_NAME ($ACCELERATOR_TYPE) in $ZONE."
  gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_flags[@]}" "${create_flags[@]}"
fi

if [[ $setup == 1 ]]; then
  archive="$(mktemp -t bam_jax.XXXXXX.tar.gz)"
  trap 'rm -f "$archive"' EXIT
  # Tracked and untracked files that git does not ignore: no .venv, workdirs or caches.
  (cd "$repo_root" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 tar czf "$archive")
  echo "Copying the repository ($(du -h "$archive" | cut -f1)) to ~/$REMOTE_DIR on every worker."
  gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:bam_jax_src.tar.gz" \
    "${gcloud_flags[@]}" --worker=all
  q_dir="$(printf '%q' "$REMOTE_DIR")"
  q_spec="$(printf '%q' "$JAX_TPU_SPEC")"
  on_all_workers "set -e; mkdir -p $q_dir; tar xzf bam_jax_src.tar.gz -C $q_dir; \
    cd $q_dir && $PYTHON -m venv .venv && .venv/bin/pip install --quiet --upgrade pip && \
    .venv/bin/pip install --quiet -e . $q_spec"
fi

# Each argument is quoted for the remote shell, so overrides with spaces or brackets survive.
remote_args="$(printf '%q ' --config.distributed.enabled=True "${main_args[@]}")"
run="cd $(printf '%q' "$REMOTE_DIR") && .venv/bin/python -m bam_jax.main $remote_args"
if [[ $detach == 1 ]]; then
  on_all_workers "nohup bash -c $(printf '%q' "$run") > $(printf '%q' "$REMOTE_DIR")/train.log 2>&1 < /dev/null &"
  echo "Started on every worker; output in ~/$REMOTE_DIR/train.log there."
  exit 0
fi
on_all_workers "$run"

if [[ $delete == 1 ]]; then
  echo "Deleting TPU VM $TPU_NAME."
  gcloud compute tpus tpu-vm delete "$TPU_NAME" "${gcloud_flags[@]}" --quiet
fi
