"""Tests of the multi-crop augmentations: crop areas, flip, jitter and grayscale rates, ranges."""

import numpy as np
import pytest
from skimage import data as skimage_data
import tensorflow as tf

from bam_jax.data import augment
from bam_jax.data import config as config_lib
from bam_jax.data import multicrop

_TRIALS = 400


def _seed(i: int) -> tf.Tensor:
  return tf.constant([17, i], tf.int32)


def _plain_recipe(**overrides) -> multicrop.MultiCropRecipe:
  """A recipe whose only random operations are the ones named in `overrides`."""
  config = config_lib.default_config()
  config.global_crop_size = 32
  config.local_crop_size = 16
  config.global_crop_scale = (1.0, 1.0)
  config.crop_aspect_ratio = (1.0, 1.0)
  config.flip_probability = 0.0
  config.color_jitter_probability = 0.0
  config.grayscale_probability = 0.0
  config.blur_probability_global = (0.0, 0.0)
  config.blur_probability_local = 0.0
  config.solarize_probability_global = (0.0, 0.0)
  config.update(overrides)
  return multicrop.recipe_from_config(config, color=True)


def test_crop_area_within_scale():
  shape = tf.constant([400, 600, 3])
  for scale in [(0.25, 1.0), (0.05, 0.25)]:
    fractions = []
    for i in range(_TRIALS):
      _, size = augment.sample_crop_box(shape, _seed(i), scale=scale, aspect_ratio=(3 / 4, 4 / 3))
      fractions.append(float(size[0] * size[1]) / (400 * 600))
    fractions = np.asarray(fractions)
    # Integer box sides move the area by a few percent around the sampled value.
    assert fractions.min() >= scale[0] * 0.95
    assert fractions.max() <= scale[1] * 1.05
    if scale[1] <= 0.25:
      # Every box of at most a quarter of the area fits, so the area is uniform in `scale`:
      # its mean has a standard error of 0.058 * 0.2 / 0.2 / sqrt(400), about 0.003.
      assert abs(fractions.mean() - np.mean(scale)) < 0.012
      assert abs(np.median(fractions) - np.mean(scale)) < 0.02


def test_crop_aspect_ratio_within_range():
  shape = tf.constant([400, 600, 3])
  for i in range(100):
    _, size = augment.sample_crop_box(shape, _seed(i), scale=(0.05, 0.25), aspect_ratio=(3 / 4, 4 / 3))
    ratio = float(size[1]) / float(size[0])
    assert 3 / 4 * 0.9 <= ratio <= 4 / 3 * 1.1


def test_resized_crop_upscales_small_image():
  image = tf.constant(skimage_data.astronaut()[::64, ::64])  # 8 x 8 pixels
  crop = augment.random_resized_crop(image, _seed(0), size=96, scale=(0.25, 1.0), aspect_ratio=(0.75, 1.33))
  assert crop.shape == (96, 96, 3)
  assert crop.dtype == tf.float32
  assert float(tf.reduce_min(crop)) >= 0.0
  assert float(tf.reduce_max(crop)) <= 1.0


def test_flip_rate():
  image = tf.constant(np.arange(12, dtype=np.float32).reshape(2, 2, 3))
  flips = sum(
      bool(tf.reduce_any(augment.random_flip(image, _seed(i), 0.5) != image)) for i in range(_TRIALS)
  )
  # Binomial(400, 0.5) has a standard deviation of 10, so 60 is 6 sigma.
  assert abs(flips - _TRIALS * 0.5) < 60


def test_color_jitter_rate():
  recipe = _plain_recipe(color_jitter_probability=0.8)
  plain = _plain_recipe()
  image = tf.constant(skimage_data.coffee()[::8, ::8])
  reference = multicrop.make_view(image, _seed(0), plain.global_views[0], plain).numpy()
  changed = sum(
      not np.allclose(
          multicrop.make_view(image, _seed(i), recipe.global_views[0], recipe).numpy(), reference, atol=1e-4
      )
      for i in range(_TRIALS)
  )
  # Binomial(400, 0.8) has a standard deviation of 8; a jitter that changes nothing is rare.
  assert abs(changed - _TRIALS * 0.8) < 48


def test_grayscale_rate():
  recipe = _plain_recipe(grayscale_probability=0.2)
  image = tf.constant(skimage_data.coffee()[::8, ::8])
  gray = 0
  for i in range(_TRIALS):
    view = multicrop.make_view(image, _seed(i), recipe.global_views[0], recipe).numpy()
    pixels = view * np.asarray(recipe.std) + np.asarray(recipe.mean)
    gray += int(np.allclose(pixels[..., 0], pixels[..., 1], atol=1e-4))
  assert abs(gray - _TRIALS * 0.2) < 48


def test_grayscale_source_skips_saturation_hue_and_grayscale():
  config = config_lib.default_config()
  recipe = multicrop.recipe_from_config(config, color=False)
  assert not recipe.color
  config.color_augmentation = True
  assert multicrop.recipe_from_config(config, color=False).color


def test_solarize_inverts_bright_pixels():
  image = tf.constant([[[0.2, 0.5, 0.9]]])
  np.testing.assert_allclose(augment.solarize(image, 0.5).numpy(), [[[0.2, 0.5, 0.1]]], atol=1e-6)


def test_blur_preserves_mean_and_smooths():
  image = tf.constant(np.random.default_rng(0).uniform(size=(32, 32, 3)), tf.float32)
  blurred = augment.gaussian_blur(image, tf.constant(2.0), max_sigma=2.0).numpy()
  assert blurred.shape == (32, 32, 3)
  assert abs(blurred.mean() - float(tf.reduce_mean(image))) < 0.01
  assert blurred.std() < 0.5 * float(tf.math.reduce_std(image))


def test_views_shapes_and_normalisation():
  config = config_lib.default_config()
  recipe = multicrop.recipe_from_config(config, color=True)
  views = multicrop.make_views(tf.constant(skimage_data.chelsea()), _seed(3), recipe)
  assert views["global_crops"].shape == (2, 224, 224, 3)
  assert views["local_crops"].shape == (6, 96, 96, 3)
  low = (0.0 - np.max(config.mean)) / np.min(config.std)
  high = (1.0 - np.min(config.mean)) / np.min(config.std)
  for crops in views.values():
    assert crops.dtype == tf.float32
    assert float(tf.reduce_min(crops)) >= low - 1e-4
    assert float(tf.reduce_max(crops)) <= high + 1e-4


def test_views_deterministic_per_seed():
  recipe = multicrop.recipe_from_config(config_lib.fashion_mnist_config(), color=False)
  image = tf.constant(skimage_data.camera()[::16, ::16, None].repeat(3, axis=-1))
  first = multicrop.make_views(image, _seed(5), recipe)
  again = multicrop.make_views(image, _seed(5), recipe)
  other = multicrop.make_views(image, _seed(6), recipe)
  np.testing.assert_array_equal(first["global_crops"].numpy(), again["global_crops"].numpy())
  assert not np.allclose(first["global_crops"].numpy(), other["global_crops"].numpy())


@pytest.mark.parametrize(
    "field, value",
    [
        ("blur_probability_global", (1.0,)),
        ("solarize_probability_global", (0.0, 0.2, 0.3)),
        ("global_crop_scale", (0.9, 0.1)),
        ("flip_probability", 1.5),
        ("std", (0.2, 0.0, 0.2)),
        ("num_global_crops", 0),
    ],
)
def test_invalid_recipe_raises(field, value):
  config = config_lib.default_config()
  config[field] = value
  with pytest.raises(ValueError, match=field):
    multicrop.recipe_from_config(config, color=True)
