"""The optax optimizer of the recipe: clipping, then AdamW with scheduled lr and weight decay.

AdamW sits inside `optax.inject_hyperparams`, so the optimizer state carries the learning rate and
weight decay it applied at the last step and the trainer logs exactly those values.
"""

from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from bam_jax.train import schedules

# The patch projection of the ViT lives at params["backbone"][PATCH_EMBEDDING]. When it is frozen,
# the optimizer leaves it untouched (no gradient step and no weight decay).
PATCH_EMBEDDING = "patch_embedding"
TRAINABLE = "trainable"
FROZEN = "frozen"


def weight_decay_mask(params: Any) -> Any:
  """Returns a tree of bools, True where weight decay applies.

  Only weight matrices (leaves named `kernel`) are decayed; biases, LayerNorm scales, the CLS
  token and position embeddings are not.
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _key_names(path)[-1] == "kernel", params)


def trainable_labels(params: Any, freeze_patch_embedding: bool) -> Any:
  """Labels each leaf TRAINABLE or FROZEN; only the patch projection can be frozen."""
  def label(path, _):
    frozen = freeze_patch_embedding and _key_names(path)[:2] == ("backbone", PATCH_EMBEDDING)
    return FROZEN if frozen else TRAINABLE

  labels = jax.tree_util.tree_map_with_path(label, params)
  if freeze_patch_embedding and FROZEN not in jax.tree_util.tree_leaves(labels):
    raise ValueError(
        "model.freeze_patch_embedding is True but the parameters have no "
        f"['backbone']['{PATCH_EMBEDDING}'] entry to freeze.")
  return labels


def _key_names(path: tuple[Any, ...]) -> tuple[str, ...]:
  return tuple(str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path)


def make_optimizer(optim_config: ml_collections.ConfigDict, *, global_batch_size: int,
                   durations: schedules.Durations, freeze_patch_embedding: bool,
                   ) -> optax.GradientTransformation:
  """Builds clip-by-global-norm followed by AdamW with the recipe's schedules.

  The global norm used for clipping covers the trainable parameters only. Frozen leaves get a zero
  update through `optax.set_to_zero` and hold no Adam moments.

  Args:
    optim_config: `config.optim` (lr_per_256, min_lr, warmup_epochs, weight_decay,
      weight_decay_end, clip_norm, b1, b2).
    global_batch_size: images per step over all devices; scales the peak learning rate.
    durations: the run's length in steps.
    freeze_patch_embedding: leave params["backbone"]["patch_embedding"] unchanged.
  """
  learning_rate = schedules.learning_rate_schedule(optim_config, global_batch_size, durations)
  weight_decay = schedules.weight_decay_schedule(optim_config, durations)

  # `mask` is a function of the params, not of the step, so it must not be treated as a schedule.
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=learning_rate,
      weight_decay=weight_decay,
      b1=optim_config.b1,
      b2=optim_config.b2,
      mask=weight_decay_mask,
  )
  clip = optax.clip_by_global_norm(optim_config.clip_norm) if optim_config.clip_norm > 0 else (
      optax.identity())
  trainable = optax.chain(clip, adamw)

  return optax.multi_transform(
      {TRAINABLE: trainable, FROZEN: optax.set_to_zero()},
      lambda params: trainable_labels(params, freeze_patch_embedding),
  )


def applied_hyperparams(opt_state: optax.OptState) -> dict[str, jax.Array]:
  """Returns the learning rate and weight decay that the last optimizer update applied."""
  # The injected state contains each value twice: the array in `hyperparams` and the schedule's own
  # state in `hyperparams_states`; only the array is wanted.
  def is_array(_, value):
    return isinstance(value, (jax.Array, np.ndarray))

  return {
      name: optax.tree_utils.tree_get(opt_state, name, filtering=is_array)
      for name in ("learning_rate", "weight_decay")
  }
