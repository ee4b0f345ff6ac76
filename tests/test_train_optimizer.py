"""Tests of the optimizer: masked weight decay, the frozen patch projection and clipping."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bam_jax.train import optimizer as optimizer_lib
from bam_jax.train import schedules

LEARNING_RATE = 0.1
WEIGHT_DECAY = 0.5


def _params():
  ones = lambda *shape: jnp.ones(shape, jnp.float32)
  return {
      "backbone": {
          "patch_embedding": {"kernel": ones(4, 4, 3, 8), "bias": ones(8)},
          "cls_token": ones(1, 1, 8),
          "block_0": {"attention": {"query": {"kernel": ones(8, 2, 4), "bias": ones(2, 4)}},
                      "norm1": {"scale": ones(8), "bias": ones(8)}},
      },
      "head": {"output": {"kernel": ones(8, 6), "bias": ones(6)}},
  }


def _optimizer(freeze: bool, clip_norm: float = 0.0) -> optax.GradientTransformation:
  optim = ml_collections.ConfigDict({
      "lr_per_256": LEARNING_RATE, "min_lr": LEARNING_RATE, "warmup_epochs": 0.0,
      "weight_decay": WEIGHT_DECAY, "weight_decay_end": WEIGHT_DECAY, "clip_norm": clip_norm,
      "b1": 0.9, "b2": 0.999,
  })
  durations = schedules.Durations(steps_per_epoch=10, total_steps=10, warmup_steps=0)
  return optimizer_lib.make_optimizer(optim, global_batch_size=256, durations=durations,
                                      freeze_patch_embedding=freeze)


def _zero_grad_updates(freeze: bool):
  """With zero gradients Adam's step is 0, so the update is the weight decay alone."""
  params = _params()
  optimizer = _optimizer(freeze)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, state = optimizer.update(grads, optimizer.init(params), params)
  return updates, state


def test_weight_decay_on_kernels_only():
  updates, _ = _zero_grad_updates(freeze=False)
  decayed = -LEARNING_RATE * WEIGHT_DECAY

  np.testing.assert_allclose(updates["head"]["output"]["kernel"], decayed, rtol=1e-6)
  np.testing.assert_allclose(
      updates["backbone"]["block_0"]["attention"]["query"]["kernel"], decayed, rtol=1e-6)
  np.testing.assert_allclose(updates["backbone"]["patch_embedding"]["kernel"], decayed, rtol=1e-6)
  for leaf in (updates["head"]["output"]["bias"],
               updates["backbone"]["block_0"]["attention"]["query"]["bias"],
               updates["backbone"]["block_0"]["norm1"]["scale"],
               updates["backbone"]["block_0"]["norm1"]["bias"],
               updates["backbone"]["cls_token"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_frozen_patch_projection_gets_no_update():
  params = _params()
  optimizer = _optimizer(freeze=True)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)

  np.testing.assert_array_equal(updates["backbone"]["patch_embedding"]["kernel"], 0.0)
  np.testing.assert_array_equal(updates["backbone"]["patch_embedding"]["bias"], 0.0)
  assert np.all(np.asarray(updates["head"]["output"]["kernel"]) < 0)


def test_applied_hyperparams_are_reported():
  _, state = _zero_grad_updates(freeze=True)
  applied = optimizer_lib.applied_hyperparams(state)
  assert float(applied["learning_rate"]) == pytest.approx(LEARNING_RATE)
  assert float(applied["weight_decay"]) == pytest.approx(WEIGHT_DECAY)


def test_clipping_covers_trainable_leaves_only():
  params = _params()
  optimizer = _optimizer(freeze=True, clip_norm=0.3)
  grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
  _, state = optimizer.update(grads, optimizer.init(params), params)

  # Adam's first moment after one step is (1 - b1) * clipped gradient. Had the frozen leaves'
  # gradients counted towards the global norm, the trainable ones would be clipped below 0.3.
  first_moment = optax.tree_utils.tree_get(state, "mu")
  assert float(optax.tree.norm(first_moment)) == pytest.approx(0.1 * 0.3, rel=1e-5)


def test_freezing_without_patch_embedding_is_rejected():
  params = {"backbone": {"cls_token": jnp.ones((1, 1, 8))}}
  with pytest.raises(ValueError, match="patch_embedding"):
    _optimizer(freeze=True).init(params)
