#!/usr/bin/env bash
# SLURM batch script: bam_jax pre-training on a GPU cluster, one process per node.
#
# Usage (from the repository root, with the package installed in .venv on a shared file system):
#   sbatch --nodes=2 --gpus-per-node=8 launch/gpu_slurm.sh \
#       --config=configs/imagenet.py:vit_small --workdir=/shared/runs/bam_vit_s16 \
#       --config.data.data_dir=/shared/tensorflow_datasets
#
# Every argument is passed to `python -m bam_jax.main` unchanged. Each node runs one process that
# drives all GPUs of that node and reads its own part of the dataset, so the per-node batch is
# global_batch_size / number of nodes. The workdir and the TFDS data_dir must be on a file system
# that every node can read and write (or on gs://). Submitting the same command again resumes
# from the latest checkpoint in the workdir.
#
# Environment (read when the job starts):
#   BAM_PYTHON            interpreter with bam_jax and CUDA-enabled JAX installed
#                         (default: .venv/bin/python in the submission directory). Install JAX for
#                         CUDA with e.g. `pip install "jax[cuda12]==<version pinned in pyproject.toml>"`.
#   JAX_COORDINATOR_PORT  port of the jax.distributed coordinator on the first node
#                         (default: 12000 + SLURM_JOB_ID % 20000, so jobs sharing a node differ).
#
# The #SBATCH lines below are defaults; flags given to sbatch override them.
#SBATCH --job-name=bam-jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --output=%x-%j.out

set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "Pass bam_jax.main arguments, e.g. --config=configs/cifar10.py --workdir=DIR." >&2
  exit 2
fi
if [[ "${SLURM_NTASKS_PER_NODE:-1}" != 1 ]]; then
  echo "This script runs one process per node; got --ntasks-per-node=$SLURM_NTASKS_PER_NODE." >&2
  exit 2
fi

BAM_PYTHON="${BAM_PYTHON:-$SLURM_SUBMIT_DIR/.venv/bin/python}"
coordinator_host="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
coordinator_port="${JAX_COORDINATOR_PORT:-$((12000 + SLURM_JOB_ID % 20000))}"
echo "Job $SLURM_JOB_ID: $SLURM_NNODES nodes, coordinator $coordinator_host:$coordinator_port."

# The coordinator address, process count and process id are passed explicitly, and SLURM_LOCALID
# is removed from each process's environment. Otherwise jax.distributed.initialize() detects
# SLURM and restricts every process to the GPU whose index equals SLURM_LOCALID, i.e. one GPU
# per node with one task per node (jax 0.10.2, jax/_src/clusters/cluster.py).
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '
  exec env -u SLURM_LOCALID "$0" -m bam_jax.main \
    --config.distributed.enabled=True \
    --config.distributed.coordinator_address="$1" \
    --config.distributed.num_processes="$SLURM_NTASKS" \
    --config.distributed.process_id="$SLURM_PROCID" \
    "${@:2}"
' "$BAM_PYTHON" "$coordinator_host:$coordinator_port" "$@"
