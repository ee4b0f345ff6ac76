"""Tests of the epoch-to-step resolution and the lr, momentum and weight-decay schedules."""

import math

import ml_collections
import numpy as np
import pytest

from bam_jax.train import schedules


def _config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({
      "global_batch_size": 512,
      "steps_per_epoch": 0,
      "total_epochs": 10.0,
      "total_steps": 0,
      "optim": {"lr_per_256": 3e-4, "min_lr": 1e-5, "warmup_epochs": 2.0, "weight_decay": 0.04,
                "weight_decay_end": 0.4},
      "teacher": {"momentum": 0.995, "momentum_end": 1.0},
  })
  config.update_from_flattened_dict(overrides)
  return config


def test_durations_from_epochs():
  durations = schedules.resolve_durations(_config(), num_train_examples=5_120)
  assert durations.steps_per_epoch == 10
  assert durations.total_steps == 100
  assert durations.warmup_steps == 20


def test_durations_overrides():
  config = _config(**{"steps_per_epoch": 7, "total_steps": 33, "optim.warmup_epochs": 0.5})
  durations = schedules.resolve_durations(config, num_train_examples=None)
  assert durations.steps_per_epoch == 7
  assert durations.total_steps == 33
  assert durations.warmup_steps == 4


@pytest.mark.parametrize("overrides, examples, message", [
    ({}, None, "steps_per_epoch"),
    ({}, 100, "larger than"),
    ({"total_epochs": 0.0}, 5_120, "total_epochs"),
    ({"optim.warmup_epochs": 11.0}, 5_120, "warmup_epochs"),
])
def test_durations_invalid(overrides, examples, message):
  with pytest.raises(ValueError, match=message):
    schedules.resolve_durations(_config(**overrides), num_train_examples=examples)


def test_learning_rate_warmup_then_cosine():
  config = _config()
  durations = schedules.resolve_durations(config, num_train_examples=5_120)
  schedule = schedules.learning_rate_schedule(config.optim, config.global_batch_size, durations)
  peak = 3e-4 * 512 / 256

  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(20)), peak, rtol=1e-6)
  # Halfway through the 80 decay steps the cosine is at the mean of peak and minimum.
  np.testing.assert_allclose(float(schedule(60)), (peak + 1e-5) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(100)), 1e-5, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(1_000)), 1e-5, rtol=1e-5)


def test_momentum_and_weight_decay_cosines():
  config = _config()
  durations = schedules.resolve_durations(config, num_train_examples=5_120)
  momentum = schedules.momentum_schedule(config.teacher, durations)
  weight_decay = schedules.weight_decay_schedule(config.optim, durations)

  for step in (0, 13, 50, 87, 100):
    cosine = 0.5 * (1 + math.cos(math.pi * step / 100))
    np.testing.assert_allclose(float(momentum(step)), 1.0 - 0.005 * cosine, rtol=1e-6)
    np.testing.assert_allclose(float(weight_decay(step)), 0.4 - 0.36 * cosine, rtol=1e-5)


def test_peak_learning_rate_scales_with_batch():
  optim = _config().optim
  assert schedules.peak_learning_rate(optim, 4096) == pytest.approx(4.8e-3)
  assert schedules.peak_learning_rate(optim, 256) == pytest.approx(3e-4)


def test_min_lr_above_peak_raises():
  config = _config()
  config.optim.min_lr = 1.0
  durations = schedules.resolve_durations(config, num_train_examples=5_120)
  with pytest.raises(ValueError, match="optim.min_lr=1.0 is above the peak learning rate"):
    schedules.learning_rate_schedule(config.optim, config.global_batch_size, durations)
