"""The training state and its creation, already sharded, on a device mesh."""

from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from bam_jax import models
from bam_jax import parallel

Params = Any

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
  """Everything that changes during pre-training.

  Attributes:
    step: int32 scalar, the number of optimizer updates applied so far.
    params: the student network's parameters, {"backbone": ..., "head": ...}.
    teacher_params: the EMA teacher's parameters (same tree as `params`), or None in
      single-network mode.
    opt_state: the optax state of `params`.
  """
  step: jax.Array
  params: Params
  teacher_params: Params | None
  opt_state: optax.OptState


def build_network(model_config: ml_collections.ConfigDict) -> models.BAMNetwork:
  """Builds the backbone-plus-head network that `config.model` describes.

  `model_config.variant` names an entry of `models.VIT_VARIANTS` (width, depth, num_heads).
  """
  if model_config.variant not in models.VIT_VARIANTS:
    raise ValueError(
        f"model.variant={model_config.variant!r} is not a ViT variant; choose one of "
        f"{sorted(models.VIT_VARIANTS)}.")
  if model_config.dtype not in _DTYPES:
    raise ValueError(
        f"model.dtype={model_config.dtype!r} is not supported; choose one of {sorted(_DTYPES)}.")
  return models.BAMNetwork(
      patch_size=model_config.patch_size,
      **models.VIT_VARIANTS[model_config.variant],
      mlp_ratio=model_config.get("mlp_ratio", 4.0),
      freeze_patch_embedding=model_config.freeze_patch_embedding,
      drop_path_rate=model_config.get("drop_path_rate", 0.0),
      head_hidden_dim=model_config.head_hidden_dim,
      head_output_dim=model_config.head_output_dim,
      head_layers=model_config.head_layers,
      dtype=_DTYPES[model_config.dtype],
  )


def init_train_state(rng: jax.Array, network: nn.Module, optimizer: optax.GradientTransformation,
                     batch_shapes: Mapping[str, jax.ShapeDtypeStruct], *,
                     use_ema_teacher: bool) -> TrainState:
  """Initialises the student and, when `use_ema_teacher`, a teacher copy of it.

  Args:
    rng: PRNG key for parameter initialisation.
    network: the `BAMNetwork`.
    optimizer: the optax transformation whose state is created here.
    batch_shapes: shapes of one batch, "global_crops" `[batch, G, H, W, C]` and optionally
      "local_crops" `[batch, L, h, w, C]`; only the per-image shapes matter.
    use_ema_teacher: keep an EMA teacher (False: single-network mode, `teacher_params` None).
  """
  global_crops = jnp.zeros((1, *batch_shapes["global_crops"].shape[1:]), jnp.float32)
  local_crops = None
  if "local_crops" in batch_shapes:
    local_crops = jnp.zeros((1, *batch_shapes["local_crops"].shape[1:]), jnp.float32)
  params = network.init(rng, global_crops, local_crops, train=False)["params"]
  # The teacher starts as an exact copy of the student, as in DINO.
  teacher_params = jax.tree.map(jnp.copy, params) if use_ema_teacher else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, teacher_params=teacher_params,
                    opt_state=optimizer.init(params))


def state_sharding(abstract_state: TrainState, mesh: Mesh) -> TrainState:
  """Returns the sharding of every state leaf: a full replica on each device.

  NOTE: pure data parallelism. Models too large to replicate would need the parameters and
  optimizer state split over a second mesh axis, which bam-jax does not do yet.
  """
  return jax.tree.map(lambda _: parallel.replicated_sharding(mesh), abstract_state)


def create_sharded_train_state(
    rng: jax.Array, network: nn.Module, optimizer: optax.GradientTransformation,
    batch_shapes: Mapping[str, jax.ShapeDtypeStruct], mesh: Mesh, *, use_ema_teacher: bool,
) -> tuple[TrainState, TrainState]:
  """Creates the train state directly in its sharded layout on `mesh`.

  The state's shapes come from `jax.eval_shape`, so no unsharded copy is ever materialised.

  Returns:
    (state, sharding): the initialised state and the matching tree of `NamedSharding`s.
  """
  def init(key):
    return init_train_state(key, network, optimizer, batch_shapes,
                            use_ema_teacher=use_ema_teacher)

  abstract_state = jax.eval_shape(init, rng)
  sharding = state_sharding(abstract_state, mesh)
  state = jax.jit(init, out_shardings=sharding)(rng)
  return state, sharding


def abstract_state_with_sharding(state_or_abstract: TrainState,
                                 sharding: TrainState) -> TrainState:
  """Returns `jax.ShapeDtypeStruct`s carrying `sharding`, the restore target for checkpoints."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state_or_abstract, sharding)

