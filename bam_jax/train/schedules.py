"""Training durations and the per-step schedules of the recipe.

Configs state durations in epochs (or `total_steps`); `resolve_durations` turns them into steps in
this one place, and every schedule below is a function of the optimizer step.
"""

import dataclasses
import math

import jax.numpy as jnp
import ml_collections
import optax


@dataclasses.dataclass(frozen=True)
class Durations:
  """Training length in optimizer steps."""
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int


def resolve_durations(config: ml_collections.ConfigDict,
                      num_train_examples: int | None = None) -> Durations:
  """Resolves epoch-based durations of `config` to steps.

  `config.steps_per_epoch` wins when positive; otherwise it is
  `num_train_examples // config.global_batch_size` (the last partial batch of an epoch is
  dropped). `config.total_steps`, when positive, overrides `config.total_epochs`.
  `config.optim.warmup_epochs` may be fractional.
  """
  steps_per_epoch = int(config.get("steps_per_epoch", 0) or 0)
  if steps_per_epoch <= 0:
    if num_train_examples is None:
      raise ValueError(
          "config.steps_per_epoch is not set and the number of training examples is unknown; "
          "set --config.steps_per_epoch or --config.num_train_examples.")
    steps_per_epoch = num_train_examples // config.global_batch_size
    if steps_per_epoch <= 0:
      raise ValueError(
          f"global_batch_size={config.global_batch_size} is larger than the "
          f"{num_train_examples} training examples; use a smaller batch.")

  total_steps = int(config.get("total_steps", 0) or 0)
  if total_steps <= 0:
    total_steps = int(round(config.total_epochs * steps_per_epoch))
  if total_steps <= 0:
    raise ValueError(
        f"Training would run {total_steps} steps (total_epochs={config.get('total_epochs')}, "
        f"total_steps={config.get('total_steps')}); set a positive --config.total_epochs or "
        "--config.total_steps.")

  warmup_steps = int(round(config.optim.warmup_epochs * steps_per_epoch))
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(
        f"optim.warmup_epochs={config.optim.warmup_epochs} gives {warmup_steps} warm-up steps, "
        f"outside [0, total_steps={total_steps}]; lower --config.optim.warmup_epochs.")
  return Durations(steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                   warmup_steps=warmup_steps)


def peak_learning_rate(optim_config: ml_collections.ConfigDict, global_batch_size: int) -> float:
  """Returns the linear-scaling peak learning rate `lr_per_256 * global_batch_size / 256`."""
  return optim_config.lr_per_256 * global_batch_size / 256


def cosine_ramp(start: float, end: float, total_steps: int) -> optax.Schedule:
  """Returns `end + (start - end) * (1 + cos(pi * step / total_steps)) / 2`, held at `end` after.

  The same half-cosine serves the learning-rate decay, the teacher momentum (rising to 1) and the
  weight decay (rising).
  """
  def schedule(step):
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
  return schedule


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, global_batch_size: int,
                           durations: Durations) -> optax.Schedule:
  """Linear warm-up from 0 to the scaled peak, then a cosine to `optim.min_lr` at the last step.

  `optim.min_lr` is absolute (not scaled with the batch size), as in the published scripts.

  Raises:
    ValueError: if `optim.min_lr` exceeds the peak, which would make the "decay" rise. The
      recipe's min_lr of 1e-3 does so below a global batch of about 853 at lr_per_256 = 3e-4.
  """
  peak = peak_learning_rate(optim_config, global_batch_size)
  if optim_config.min_lr > peak:
    raise ValueError(
        f"optim.min_lr={optim_config.min_lr} is above the peak learning rate {peak:g} "
        f"(lr_per_256={optim_config.lr_per_256} x global_batch_size={global_batch_size} / 256); "
        "lower --config.optim.min_lr or raise the learning rate.")
  warmup = optax.linear_schedule(0.0, peak, max(durations.warmup_steps, 1))
  decay = cosine_ramp(peak, optim_config.min_lr, durations.total_steps - durations.warmup_steps)
  if durations.warmup_steps == 0:
    return decay
  return optax.join_schedules([warmup, decay], boundaries=[durations.warmup_steps])


def weight_decay_schedule(optim_config: ml_collections.ConfigDict,
                          durations: Durations) -> optax.Schedule:
  """Cosine from `optim.weight_decay` to `optim.weight_decay_end` over the whole run."""
  return cosine_ramp(optim_config.weight_decay, optim_config.weight_decay_end,
                     durations.total_steps)


def momentum_schedule(teacher_config: ml_collections.ConfigDict,
                      durations: Durations) -> optax.Schedule:
  """Cosine from `teacher.momentum` to `teacher.momentum_end` for the EMA teacher."""
  return cosine_ramp(teacher_config.momentum, teacher_config.momentum_end, durations.total_steps)
