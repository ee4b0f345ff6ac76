"""One BAM pre-training step as a pure function, and its jitted, sharded form."""

import functools
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from bam_jax import parallel
from bam_jax.train import optimizer as optimizer_lib
from bam_jax.train.state import TrainState

# (student projections, teacher projections or None) -> (loss, diagnostics), e.g. the function
# returned by `bam_jax.objective.make_sharded_bam_loss`.
LossFn = Callable[[jax.Array, jax.Array | None], tuple[jax.Array, dict[str, jax.Array]]]


def ema_update(teacher_params, student_params, momentum: jax.Array):
  """Returns `momentum * teacher + (1 - momentum) * student`, leaf by leaf."""
  return jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s,
                      teacher_params, student_params)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    network: nn.Module,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    momentum_schedule: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """Runs one optimizer update of the student (and the EMA update of the teacher).

  The teacher is first moved towards the current student with the scheduled momentum, then both
  networks project every crop, the objective compares them, and optax updates the student.

  Args:
    state: the current state; `state.step` selects the schedule values.
    batch: "global_crops" float32 `[batch, G, H, W, C]` and optionally "local_crops" float32
      `[batch, L, h, w, C]`, sharded on the batch axis.
    rng: base PRNG key; folded with the step for stochastic depth.
    network: the `BAMNetwork`.
    optimizer: from `optimizer.make_optimizer`.
    loss_fn: the objective on crop-major projections `[crops, batch, dim]`.
    momentum_schedule: teacher momentum as a function of the step.

  Returns:
    The new state and scalar metrics: loss, learning_rate, weight_decay, momentum, grad_norm
    (before clipping), param_norm, update_norm and the objective's diagnostics.
  """
  global_crops = batch["global_crops"]
  local_crops = batch.get("local_crops")
  step_rng = jax.random.fold_in(rng, state.step)
  momentum = jnp.asarray(momentum_schedule(state.step), jnp.float32)

  teacher_params = state.teacher_params
  teacher_projections = None
  if teacher_params is not None:
    teacher_params = ema_update(teacher_params, state.params, momentum)
    teacher_outputs = network.apply({"params": teacher_params}, global_crops, local_crops,
                                    train=False)
    teacher_projections = jax.lax.stop_gradient(teacher_outputs["projections"])

  def loss_of(params):
    outputs = network.apply({"params": params}, global_crops, local_crops, train=True,
                            rngs={"dropout": step_rng})
    return loss_fn(outputs["projections"], teacher_projections)

  (loss, diagnostics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  metrics = {
      "loss": loss,
      "momentum": momentum,
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "update_norm": optax.tree.norm(updates),
      **optimizer_lib.applied_hyperparams(opt_state),
      **diagnostics,
  }
  new_state = state.replace(step=state.step + 1, params=params, teacher_params=teacher_params,
                            opt_state=opt_state)
  return new_state, metrics


def make_sharded_train_step(
    *,
    network: nn.Module,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    momentum_schedule: optax.Schedule,
    mesh: Mesh,
    state_sharding: TrainState,
) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array],
              tuple[TrainState, dict[str, jax.Array]]]:
  """Jits `train_step` with the state's sharding, batch-sharded inputs and a donated state.

  The returned function takes `(state, batch, rng)`; `state` is donated, so its buffers are
  reused for the new state and must not be read after the call.
  """
  step_fn = functools.partial(train_step, network=network, optimizer=optimizer, loss_fn=loss_fn,
                              momentum_schedule=momentum_schedule)
  replicated = parallel.replicated_sharding(mesh)
  return jax.jit(
      step_fn,
      in_shardings=(state_sharding, parallel.batch_sharding(mesh), replicated),
      out_shardings=(state_sharding, replicated),
      donate_argnums=0,
  )
