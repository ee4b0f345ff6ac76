"""Tests of the trainer loop's helpers: batch shapes and the NaN stop."""

import math

import numpy as np
import pytest

from bam_jax.data import config as data_config
from bam_jax.train import trainer


def test_batch_shapes_follow_data_config():
  config = data_config.fashion_mnist_config()
  shapes = trainer.batch_shapes(config, 64)
  assert shapes["global_crops"].shape == (64, 2, 28, 28, 3)
  assert shapes["local_crops"].shape == (64, 4, 16, 16, 3)

  config.num_local_crops = 0
  assert set(trainer.batch_shapes(config, 64)) == {"global_crops"}


@pytest.mark.parametrize("loss", [math.nan, math.inf])
def test_non_finite_loss_stops_run(loss, tmp_path):
  with pytest.raises(FloatingPointError, match=f"became {loss} at step 5"):
    trainer._check_finite({"loss": np.float32(loss)}, 5, tmp_path)


def test_finite_loss_passes(tmp_path):
  trainer._check_finite({"loss": np.float32(3.5)}, 5, tmp_path)
