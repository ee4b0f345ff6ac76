"""Device mesh, shardings and the move from host-local numpy batches to global arrays.

bam-jax trains data-parallel: a 1-D mesh with one axis, `data`, over every device of every
process. The training state is replicated on that mesh and every batch is split along its leading
(batch) axis. Each process reads its own share of the data (`global_batch / process_count`
images), and `host_batch_to_global` assembles those shares into one global array per input.
"""

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def distributed_config() -> ml_collections.ConfigDict:
  """Returns the `config.distributed` section that `initialize_distributed` reads.

  Fields:
    enabled: connect the processes of a multi-host job; False for one process.
    coordinator_address: "host:port" of process 0; None lets JAX detect it (Cloud TPU, SLURM,
      Open MPI).
    num_processes / process_id: None lets JAX detect them.
    coordinator_bind_address: "host:port" the coordinator listens on; None listens on every
      interface.
  """
  config = ml_collections.ConfigDict()
  config.enabled = False
  config.coordinator_address = ml_collections.config_dict.placeholder(str)
  config.num_processes = ml_collections.config_dict.placeholder(int)
  config.process_id = ml_collections.config_dict.placeholder(int)
  config.coordinator_bind_address = ml_collections.config_dict.placeholder(str)
  return config


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Connects the processes of a multi-host job when `config.distributed.enabled` is set.

  Must run before any other JAX call. With every field left at its default (None), JAX detects the
  cluster itself (Cloud TPU, SLURM, Open MPI). To start processes by hand, e.g. several on
  127.0.0.1, set `coordinator_address` ("host:port"), `num_processes` and `process_id`.
  Process 0 serves the coordinator on every interface unless `coordinator_bind_address`
  ("host:port", e.g. "127.0.0.1:1234" for processes on one machine) is set.
  """
  distributed = config.get("distributed")
  if distributed is None or not distributed.get("enabled", False):
    return
  jax.distributed.initialize(
      coordinator_address=distributed.get("coordinator_address"),
      num_processes=distributed.get("num_processes"),
      process_id=distributed.get("process_id"),
      coordinator_bind_address=distributed.get("coordinator_bind_address"),
  )
  logging.info(
      "Process %d of %d joined the job; %d local and %d global devices.",
      jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def create_mesh(axis_name: str = DATA_AXIS) -> Mesh:
  """Returns a 1-D mesh named `axis_name` over all devices of all processes.

  The mesh uses the order of `jax.devices()`, and data, state and evaluation all share it.
  """
  return Mesh(np.asarray(jax.devices()), (axis_name,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Returns the sharding that places a full copy of an array on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
  """Returns the sharding that splits an array's leading (batch) axis over `axis_name`."""
  return NamedSharding(mesh, PartitionSpec(axis_name))


def check_global_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless `global_batch_size` divides evenly over processes and devices."""
  num_devices = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % num_devices:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of the number of "
        f"devices ({num_devices}); set --config.global_batch_size to a multiple of {num_devices}.")
  if global_batch_size % jax.process_count():
    raise ValueError(
        f"global_batch_size={global_batch_size} must be divisible by the number of processes "
        f"({jax.process_count()}).")


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh,
                         axis_name: str = DATA_AXIS) -> dict[str, jax.Array]:
  """Assembles each process's host-local batch into global arrays sharded on the batch axis.

  Args:
    batch: host-local numpy arrays, each `[global_batch / process_count, ...]`. Every process
      must pass the same keys, shapes and dtypes.
    mesh: the mesh to shard over.
    axis_name: the mesh axis that splits the batch.

  Returns:
    The same keys, each a global `jax.Array` of shape `[global_batch, ...]` sharded on axis 0.
  """
  sharding = batch_sharding(mesh, axis_name)
  local_devices = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
  global_batch = {}
  for name, local in batch.items():
    local = np.asarray(local)
    if local.ndim == 0 or local.shape[0] % local_devices:
      raise ValueError(
          f"Batch entry {name!r} has shape {local.shape}; its leading (batch) axis must be a "
          f"multiple of the {local_devices} local devices.")
    global_batch[name] = jax.make_array_from_process_local_data(sharding, local)
  return global_batch


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
  """Places a full copy of every leaf of `tree` on every device of `mesh`."""
  return jax.device_put(tree, replicated_sharding(mesh))
