"""Orbax checkpoints of the training state: save, resume, and restore weights for fine-tuning.

Checkpoints live in `<workdir>/checkpoints/<step>/`. Saving is asynchronous: training continues
while a background thread writes, and Orbax finalises each step directory atomically, so an
interrupted save never becomes the latest checkpoint.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

CHECKPOINT_SUBDIR = "checkpoints"
# The name of the single item in each step directory.
STATE_ITEM = "state"


def _absolute(path: str | os.PathLike[str]) -> epath.Path:
  """Returns `path` made absolute against the working directory, unless it is a URL (gs://...).

  Orbax rejects relative paths, and `--workdir=workdir/run` is the usual way to name a local one.
  """
  if "://" in os.fspath(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.fspath(path)))


def checkpoint_directory(workdir: str | os.PathLike[str]) -> epath.Path:
  """Returns the absolute directory under `workdir` that contains the step directories."""
  return _absolute(workdir) / CHECKPOINT_SUBDIR


def create_checkpoint_manager(workdir: str | os.PathLike[str], *,
                              max_to_keep: int) -> ocp.CheckpointManager:
  """Creates an asynchronous manager that keeps the `max_to_keep` most recent checkpoints.

  The caller decides which steps to save; the manager saves every step it is given.
  """
  if max_to_keep < 1:
    raise ValueError(f"keep_checkpoints={max_to_keep} must be at least 1.")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      enable_async_checkpointing=True,
      create=True,
  )
  return ocp.CheckpointManager(checkpoint_directory(workdir), options=options,
                               item_names=(STATE_ITEM,))


def save_state(manager: ocp.CheckpointManager, step: int, state: Any) -> bool:
  """Starts saving `state` as checkpoint `step`; returns whether a save started.

  The write finishes in the background. Orbax (0.12) copies the arrays to host memory before
  `save` returns, so the caller may donate `state` to the next train step right away. Call
  `manager.wait_until_finished()` before reading the checkpoint back or exiting.
  """
  saved = manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}))
  if saved:
    logging.info("Saving checkpoint of step %d to %s.", step, manager.directory)
  return saved


def restore_latest_state(manager: ocp.CheckpointManager, abstract_state: Any) -> Any | None:
  """Restores the latest checkpoint into the layout of `abstract_state`, or returns None.

  Args:
    manager: from `create_checkpoint_manager`.
    abstract_state: a tree of `jax.ShapeDtypeStruct` with `sharding` set; the restored arrays
      are placed with those shardings.
  """
  step = manager.latest_step()
  if step is None:
    return None
  logging.info("Restoring checkpoint of step %d from %s.", step, manager.directory)
  restored = manager.restore(
      step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state)}))
  return restored[STATE_ITEM]


def _resolve_step_directory(path: epath.Path) -> epath.Path:
  """Maps a workdir, a checkpoints directory or a step directory to one step directory."""
  if (path / STATE_ITEM).exists():
    return path
  if (path / CHECKPOINT_SUBDIR).exists():
    path = path / CHECKPOINT_SUBDIR
  steps = [int(child.name) for child in path.iterdir() if child.name.isdigit()] if (
      path.exists()) else []
  if not steps:
    raise ValueError(
        f"No checkpoint found at {path}; pass a workdir, its '{CHECKPOINT_SUBDIR}' directory or "
        "one step directory inside it.")
  return path / str(max(steps))


def restore_for_finetuning(path: str | os.PathLike[str], *, use_teacher: bool = True,
                           ) -> dict[str, Any]:
  """Loads pre-trained network parameters as host numpy arrays, without the optimizer state.

  Args:
    path: a pre-training workdir (its latest checkpoint is used), its `checkpoints` directory, or
      one step directory `checkpoints/<step>`.
    use_teacher: return the EMA teacher's parameters, the usual choice for evaluation and
      fine-tuning; False returns the student's. Single-network checkpoints have no teacher and
      always return the student's.

  Returns:
    The parameter tree {"backbone": ..., "head": ...}. A ViT backbone alone is
    `params["backbone"]`.
  """
  step_directory = _resolve_step_directory(_absolute(path))
  item = step_directory / STATE_ITEM
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(item)
    tree_metadata = getattr(metadata, "item_metadata", metadata)
    # Restore every array to host memory: fine-tuning may run on a different device layout.
    target = jax.tree.map(
        lambda m: np.empty(m.shape, m.dtype) if hasattr(m, "shape") else m, tree_metadata)
    restored = checkpointer.restore(item, target)
  teacher = restored.get("teacher_params") if isinstance(restored, dict) else None
  params = teacher if use_teacher and teacher else restored["params"]
  logging.info("Loaded %s parameters from %s.",
               "teacher" if params is teacher else "student", step_directory)
  return jax.tree.map(np.asarray, params)
