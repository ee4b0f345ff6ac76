"""Tests of the sharded train step on eight CPU devices with a tiny ViT."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bam_jax import models
from bam_jax import objective
from bam_jax import parallel
from bam_jax.train import optimizer as optimizer_lib
from bam_jax.train import schedules
from bam_jax.train import state as state_lib
from bam_jax.train import step as step_lib

BATCH = 16
NUM_GLOBAL, NUM_LOCAL = 2, 2


class Trainer:
  """A tiny network, its optimizer and the jitted step, compiled once per test module."""

  def __init__(self, *, freeze: bool, use_ema: bool):
    self.mesh = parallel.create_mesh()

    config = ml_collections.ConfigDict({
        "global_batch_size": BATCH, "steps_per_epoch": 10, "total_epochs": 5.0, "total_steps": 0,
        "optim": {"lr_per_256": 0.05, "min_lr": 1e-4, "warmup_epochs": 0.2,
                  "weight_decay": 0.04, "weight_decay_end": 0.4, "clip_norm": 3.0,
                  "b1": 0.9, "b2": 0.999},
        "teacher": {"momentum": 0.9, "momentum_end": 1.0},
    })
    self.durations = schedules.resolve_durations(config)
    self.lr_schedule = schedules.learning_rate_schedule(config.optim, BATCH, self.durations)
    self.momentum_schedule = schedules.momentum_schedule(config.teacher, self.durations)

    self.network = models.BAMNetwork(
        patch_size=4, width=32, depth=1, num_heads=2, freeze_patch_embedding=freeze,
        head_hidden_dim=64, head_output_dim=32, head_layers=2)
    self.optimizer = optimizer_lib.make_optimizer(
        config.optim, global_batch_size=BATCH, durations=self.durations,
        freeze_patch_embedding=freeze)

    rng = np.random.default_rng(0)
    self.host_batch = {
        "global_crops": rng.normal(size=(BATCH, NUM_GLOBAL, 16, 16, 3)).astype(np.float32),
        "local_crops": rng.normal(size=(BATCH, NUM_LOCAL, 8, 8, 3)).astype(np.float32),
    }
    self.batch_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                     self.host_batch)

    state, self.state_sharding = state_lib.create_sharded_train_state(
        jax.random.key(0), self.network, self.optimizer, self.batch_shapes, self.mesh,
        use_ema_teacher=use_ema)
    # A host copy, because every step donates (deletes) the state it is given.
    self.initial_state = jax.device_get(state)

    loss_fn = objective.make_sharded_bam_loss(self.mesh, num_global_crops=NUM_GLOBAL, top_k=8)
    self.step = step_lib.make_sharded_train_step(
        network=self.network, optimizer=self.optimizer, loss_fn=loss_fn,
        momentum_schedule=self.momentum_schedule, mesh=self.mesh,
        state_sharding=self.state_sharding)
    self.rng = jax.random.key(1)

  def new_state(self):
    """Returns a fresh copy of the initial state, placed with the state sharding."""
    return jax.device_put(self.initial_state, self.state_sharding)

  def batch(self):
    return parallel.host_batch_to_global(self.host_batch, self.mesh)

  def run(self, state, num_steps: int):
    """Runs `num_steps` steps on the fixed batch; returns the state and per-step metrics."""
    history = []
    for _ in range(num_steps):
      state, metrics = self.step(state, self.batch(), self.rng)
      history.append(jax.device_get(metrics))
    return state, history


@pytest.fixture(scope="module")
def frozen_trainer():
  return Trainer(freeze=True, use_ema=True)


def _host(tree):
  return jax.tree.map(np.array, jax.device_get(tree))


def test_loss_decreases_on_fixed_batch(frozen_trainer):
  _, history = frozen_trainer.run(frozen_trainer.new_state(), 12)
  losses = [float(m["loss"]) for m in history]
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0], losses


def test_teacher_is_ema_of_student(frozen_trainer):
  state, _ = frozen_trainer.run(frozen_trainer.new_state(), 2)
  before = _host(state)
  assert int(before.step) == 2
  # After two updates the student has moved away from the teacher, so the EMA is not trivial.
  assert not np.allclose(before.params["head"]["output"]["kernel"],
                         before.teacher_params["head"]["output"]["kernel"])

  state, history = frozen_trainer.run(state, 1)
  after = _host(state)
  momentum = np.float32(frozen_trainer.momentum_schedule(2))
  assert float(history[0]["momentum"]) == pytest.approx(float(momentum))
  expected = jax.tree.map(lambda t, s: momentum * t + (np.float32(1) - momentum) * s,
                          before.teacher_params, before.params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7),
               after.teacher_params, expected)


def test_learning_rate_and_weight_decay_follow_schedules(frozen_trainer):
  _, history = frozen_trainer.run(frozen_trainer.new_state(), 4)
  wd_schedule = schedules.weight_decay_schedule(
      ml_collections.ConfigDict({"weight_decay": 0.04, "weight_decay_end": 0.4}),
      frozen_trainer.durations)
  for step, metrics in enumerate(history):
    assert float(metrics["learning_rate"]) == pytest.approx(
        float(frozen_trainer.lr_schedule(step)), rel=1e-6, abs=1e-12)
    assert float(metrics["weight_decay"]) == pytest.approx(float(wd_schedule(step)), rel=1e-6)
  # Warm-up: 2 steps from 0 to the peak 0.05 * 16 / 256.
  assert float(history[0]["learning_rate"]) == 0.0
  assert float(history[2]["learning_rate"]) == pytest.approx(0.05 * BATCH / 256, rel=1e-6)


def test_frozen_patch_projection_unchanged(frozen_trainer):
  state = frozen_trainer.new_state()
  initial = _host(state.params["backbone"]["patch_embedding"])
  state, _ = frozen_trainer.run(state, 3)
  final = _host(state)

  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(final.params["backbone"]["patch_embedding"][name],
                                  initial[name])
    np.testing.assert_allclose(final.teacher_params["backbone"]["patch_embedding"][name],
                               initial[name], rtol=1e-6)
  assert not np.allclose(final.params["head"]["output"]["kernel"],
                         _host(frozen_trainer.new_state().params)["head"]["output"]["kernel"])


def test_state_is_replicated_and_stays_so(frozen_trainer):
  state = frozen_trainer.new_state()
  expected = NamedSharding(frozen_trainer.mesh, PartitionSpec())
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)
    assert len(leaf.sharding.device_set) == 8

  batch = frozen_trainer.batch()
  assert batch["global_crops"].sharding.spec == PartitionSpec("data")
  assert batch["global_crops"].addressable_shards[0].data.shape[0] == BATCH // 8

  new_state, metrics = frozen_trainer.step(state, batch, frozen_trainer.rng)
  for leaf in jax.tree.leaves(new_state):
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)
  assert metrics["loss"].sharding.is_fully_replicated
  # The input state was donated to the step.
  assert state.params["head"]["output"]["kernel"].is_deleted()


def test_single_network_mode_trains():
  trainer = Trainer(freeze=False, use_ema=False)
  state = trainer.new_state()
  assert state.teacher_params is None
  initial_patch = _host(state.params["backbone"]["patch_embedding"]["kernel"])
  state, history = trainer.run(state, 2)
  assert state.teacher_params is None
  assert all(np.isfinite(float(m["loss"])) for m in history)
  # Not frozen: the patch projection is trained.
  assert not np.array_equal(_host(state.params["backbone"]["patch_embedding"]["kernel"]),
                            initial_patch)


def test_host_batch_must_split_over_devices():
  mesh = parallel.create_mesh()
  with pytest.raises(ValueError, match="multiple of the 8 local devices"):
    parallel.host_batch_to_global({"image": np.zeros((12, 2), np.float32)}, mesh)
  with pytest.raises(ValueError, match="global_batch_size=12"):
    parallel.check_global_batch_size(12, mesh)
