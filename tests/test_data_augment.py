"""Tests of the multi-crop augmentations: crop areas, operation rates, values against references."""

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


def _uniforms(shape, seed: int = 0) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, tf.constant([23, seed], tf.int32))


def _augment_copies(recipe: multicrop.MultiCropRecipe, image: np.ndarray, view: int = 0) -> np.ndarray:
  """Augments `_TRIALS` copies of one crop as global view `view`; returns them un-normalised."""
  views = recipe.global_views
  crops = np.zeros((_TRIALS, len(views)) + image.shape, np.float32)
  crops[:, view] = image
  uniforms = _uniforms([_TRIALS, len(views), multicrop.PHOTOMETRIC_UNIFORMS])
  out = multicrop.augment_crops(tf.constant(crops), uniforms, views, recipe).numpy()[:, view]
  return out * np.asarray(recipe.std) + np.asarray(recipe.mean)


def _coffee(size: int = 32) -> np.ndarray:
  image = tf.image.resize(skimage_data.coffee()[None], (size, size), antialias=True)[0] / 255.0
  return np.clip(image.numpy(), 0.0, 1.0)


def test_crop_area_within_scale():
  shape = tf.constant([400, 600, 3])
  for scale in [(0.25, 1.0), (0.05, 0.25)]:
    _, size = augment.sample_crop_boxes(
        shape, _uniforms([_TRIALS, augment.CROP_UNIFORMS]), scale=scale, aspect_ratio=(3 / 4, 4 / 3)
    )
    fractions = np.prod(size.numpy(), axis=1) / (400 * 600)
    # Integer box sides move the area by a few percent around the sampled value.
    assert fractions.min() >= scale[0] * 0.95
    assert fractions.max() <= scale[1] * 1.05
    if scale[1] <= 0.25:
      # Every box of at most a quarter of the area fits, so the area is uniform in `scale`:
      # its mean has a standard error of 0.058 * 0.2 / 0.2 / sqrt(400), about 0.003.
      assert abs(fractions.mean() - np.mean(scale)) < 0.012
      assert abs(np.median(fractions) - np.mean(scale)) < 0.02


def test_crop_boxes_inside_image():
  shape = tf.constant([50, 300, 3])
  begin, size = augment.sample_crop_boxes(
      shape, _uniforms([_TRIALS, augment.CROP_UNIFORMS]), scale=(0.25, 1.0), aspect_ratio=(3 / 4, 4 / 3)
  )
  begin, size = begin.numpy(), size.numpy()
  assert (begin >= 0).all()
  assert (size >= 1).all()
  assert (begin + size <= [50, 300]).all()


def test_crop_falls_back_to_center():
  # A 10 x 1000 image fits no box of ratio 3/4-4/3 with a quarter of its area or more.
  begin, size = augment.sample_crop_boxes(
      tf.constant([10, 1000, 3]), _uniforms([4, augment.CROP_UNIFORMS]), scale=(0.25, 1.0),
      aspect_ratio=(3 / 4, 4 / 3),
  )
  np.testing.assert_array_equal(size.numpy(), [[10, 13]] * 4)
  np.testing.assert_array_equal(begin.numpy(), [[0, 493]] * 4)


def test_crop_aspect_ratio_within_range():
  _, size = augment.sample_crop_boxes(
      tf.constant([400, 600, 3]), _uniforms([100, augment.CROP_UNIFORMS]), scale=(0.05, 0.25),
      aspect_ratio=(3 / 4, 4 / 3),
  )
  ratio = size.numpy()[:, 1] / size.numpy()[:, 0]
  assert (ratio >= 3 / 4 * 0.9).all()
  assert (ratio <= 4 / 3 * 1.1).all()


def test_resized_crop_upscales_small_image():
  image = tf.constant(skimage_data.astronaut()[::64, ::64])  # 8 x 8 pixels
  begin, size = augment.sample_crop_boxes(
      tf.shape(image), _uniforms([2, augment.CROP_UNIFORMS]), scale=(0.25, 1.0), aspect_ratio=(0.75, 1.33)
  )
  crops = augment.resized_crops(image, begin, size, output_size=96)
  assert crops.shape == (2, 96, 96, 3)
  assert crops.dtype == tf.float32
  assert float(tf.reduce_min(crops)) >= 0.0
  assert float(tf.reduce_max(crops)) <= 1.0


def test_resized_crop_matches_slice_and_resize():
  image = skimage_data.chelsea()
  crops = augment.resized_crops(
      tf.constant(image), tf.constant([[10, 20]]), tf.constant([[100, 150]]), output_size=48
  ).numpy()
  expected = tf.image.resize(image[10:110, 20:170] / 255.0, (48, 48), method="bicubic").numpy()
  np.testing.assert_allclose(crops[0], np.clip(expected, 0.0, 1.0), atol=1e-5)


def test_flip_rate():
  recipe = _plain_recipe(flip_probability=0.5)
  image = _coffee()
  views = _augment_copies(recipe, image)
  flipped = np.all(np.abs(views - image[:, ::-1]) < 1e-5, axis=(1, 2, 3))
  unchanged = np.all(np.abs(views - image) < 1e-5, axis=(1, 2, 3))
  assert (flipped | unchanged).all()
  # Binomial(400, 0.5) has a standard deviation of 10, so 60 is 6 sigma.
  assert abs(flipped.sum() - _TRIALS * 0.5) < 60


def test_color_jitter_rate():
  image = _coffee()
  views = _augment_copies(_plain_recipe(color_jitter_probability=0.8), image)
  changed = ~np.all(np.abs(views - image) < 1e-4, axis=(1, 2, 3))
  # Binomial(400, 0.8) has a standard deviation of 8; a jitter that changes nothing is rare.
  assert abs(changed.sum() - _TRIALS * 0.8) < 48


def test_color_jitter_factor_ranges():
  # Brightness alone on a mid-gray image: the factor is the output level / 0.5.
  recipe = _plain_recipe(color_jitter_probability=1.0, contrast=0.0, saturation=0.0, hue=0.0)
  views = _augment_copies(recipe, np.full((8, 8, 3), 0.5, np.float32))
  factors = views[:, 0, 0, 0] / 0.5
  assert factors.min() >= 0.6 - 1e-4
  assert factors.max() <= 1.4 + 1e-4
  # Uniform on [0.6, 1.4]: the mean has a standard error of 0.23 / sqrt(400), about 0.012.
  assert abs(factors.mean() - 1.0) < 0.06


def test_color_jitter_follows_order():
  images = tf.constant(np.stack([_coffee(16)] * 2))
  factors = tf.constant([[1.3, 0.6, 1.4, 0.08]] * 2)
  # Image 0: contrast, brightness, hue, saturation. Image 1: brightness, saturation, contrast, hue.
  order = tf.constant([[1, 0, 3, 2], [0, 2, 1, 3]], tf.int32)
  out = augment.color_jitter(images, tf.constant([True, True]), factors, order).numpy()

  def single(fn, image, value):
    return fn(image[None], tf.constant([value]))[0]

  operations = [augment.adjust_brightness, augment.adjust_contrast, augment.adjust_saturation, augment.adjust_hue]
  for i in range(2):
    expected = images[i]
    for op in order[i].numpy():
      expected = single(operations[op], expected, float(factors[i, op]))
    np.testing.assert_allclose(out[i], expected.numpy(), atol=1e-5)


def test_color_jitter_skips_unselected_images():
  images = tf.constant(np.stack([_coffee(16)] * 2))
  out = augment.color_jitter(
      images, tf.constant([False, True]), tf.constant([[1.3, 0.6, 1.4, 0.08]] * 2),
      tf.constant([[0, 1, 2, 3]] * 2, tf.int32),
  ).numpy()
  np.testing.assert_array_equal(out[0], images[0].numpy())
  assert not np.allclose(out[1], images[1].numpy(), atol=1e-3)


@pytest.mark.parametrize("size", [16, 64])  # the batched HSV round trip and the fused kernel
def test_adjust_hue_matches_tf_image(size):
  images = tf.constant(np.stack([_coffee(size)] * 3))
  delta = tf.constant([-0.1, 0.03, 0.1])
  out = augment.adjust_hue(images, delta).numpy()
  for i in range(3):
    np.testing.assert_allclose(out[i], tf.image.adjust_hue(images[i], delta[i]).numpy(), atol=1e-5)


def test_grayscale_rate():
  recipe = _plain_recipe(grayscale_probability=0.2)
  views = _augment_copies(recipe, _coffee())
  gray = np.all(np.abs(views[..., 0] - views[..., 1]) < 1e-4, axis=(1, 2))
  assert abs(gray.sum() - _TRIALS * 0.2) < 48


def test_blur_rate_per_view():
  # Sigma from 0.5 up, so that every blur changes the image measurably.
  recipe = _plain_recipe(blur_probability_global=(1.0, 0.1), blur_sigma=(0.5, 2.0))
  image = _coffee()
  for view, rate in [(0, 1.0), (1, 0.1)]:
    views = _augment_copies(recipe, image, view=view)
    blurred = np.abs(views - image).max(axis=(1, 2, 3)) > 1e-3
    # Binomial(400, 0.1) has a standard deviation of 6.
    assert abs(blurred.sum() - _TRIALS * rate) < 36


def test_solarize_rate_per_view():
  recipe = _plain_recipe(solarize_probability_global=(0.0, 0.2))
  image = _coffee()
  bright = image >= 0.5
  for view, rate in [(0, 0.0), (1, 0.2)]:
    views = _augment_copies(recipe, image, view=view)
    solarized = np.all(np.abs(views[:, bright] - (1.0 - image[bright])) < 1e-5, axis=1)
    unchanged = np.all(np.abs(views - image) < 1e-5, axis=(1, 2, 3))
    assert (solarized | unchanged).all()
    assert abs(solarized.sum() - _TRIALS * rate) < 48


def test_grayscale_source_skips_saturation_hue_and_grayscale():
  config = config_lib.default_config()
  recipe = multicrop.recipe_from_config(config, color=False)
  assert not recipe.color
  config.color_augmentation = True
  assert multicrop.recipe_from_config(config, color=False).color


def test_solarize_inverts_bright_pixels():
  image = tf.constant([[[0.2, 0.5, 0.9]]])
  np.testing.assert_allclose(augment.solarize(image, 0.5).numpy(), [[[0.2, 0.5, 0.1]]], atol=1e-6)


def test_per_crop_path_matches_batched():
  # Large crops take the per-crop path in crop_views, so it must give the batched path's views.
  config = config_lib.default_config()
  config.global_crop_size = multicrop.PER_CROP_MIN_SIZE
  recipe = multicrop.recipe_from_config(config, color=True)
  size = multicrop.PER_CROP_MIN_SIZE
  crops = tf.constant(np.stack([[_coffee(size)] * 2] * 8))
  uniforms = _uniforms([8, 2, multicrop.PHOTOMETRIC_UNIFORMS], seed=5)
  batched = multicrop.augment_crops(crops, uniforms, recipe.global_views, recipe).numpy()
  for i in range(8):
    for v, view in enumerate(recipe.global_views):
      single = multicrop._augment_one_crop(crops[i, v], uniforms[i, v], view, recipe).numpy()
      np.testing.assert_allclose(single, batched[i, v], atol=1e-4)


def _reference_blur(image: tf.Tensor, sigma: float, max_sigma: float) -> np.ndarray:
  """Blurs one image with tf.pad and tf.nn.depthwise_conv2d, the textbook separable form."""
  radius = int(np.ceil(3.0 * max_sigma))
  offsets = np.arange(-radius, radius + 1, dtype=np.float32)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  kernel /= kernel.sum()
  padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
  kernel_h = np.tile(kernel.reshape(-1, 1, 1, 1), [1, 1, 3, 1]).astype(np.float32)
  kernel_w = np.tile(kernel.reshape(1, -1, 1, 1), [1, 1, 3, 1]).astype(np.float32)
  blurred = tf.nn.depthwise_conv2d(padded[None], kernel_h, [1, 1, 1, 1], "VALID")
  return tf.nn.depthwise_conv2d(blurred, kernel_w, [1, 1, 1, 1], "VALID")[0].numpy()


def test_blur_matches_depthwise_conv():
  images = tf.constant(np.random.default_rng(0).uniform(size=(3, 20, 24, 3)), tf.float32)
  sigma = [0.3, 1.0, 2.0]
  blurred = augment.gaussian_blur(images, tf.constant(sigma), max_sigma=2.0).numpy()
  for i in range(3):
    np.testing.assert_allclose(blurred[i], _reference_blur(images[i], sigma[i], 2.0), atol=1e-5)


def test_blur_preserves_mean_and_smooths():
  image = tf.constant(np.random.default_rng(0).uniform(size=(1, 32, 32, 3)), tf.float32)
  blurred = augment.gaussian_blur(image, tf.constant([2.0]), max_sigma=2.0).numpy()
  assert blurred.shape == (1, 32, 32, 3)
  assert abs(blurred.mean() - float(tf.reduce_mean(image))) < 0.01
  assert blurred.std() < 0.5 * float(tf.math.reduce_std(image))


def test_blur_pads_images_smaller_than_kernel():
  # Radius 6 exceeds the 4-pixel side, so reflection continues symmetrically; a constant image
  # must stay constant.
  image = tf.fill([2, 4, 4, 3], 0.25)
  blurred = augment.gaussian_blur(image, tf.constant([2.0, 0.5]), max_sigma=2.0).numpy()
  np.testing.assert_allclose(blurred, 0.25, atol=1e-6)


def test_random_blur_only_selected_images():
  images = tf.constant(np.random.default_rng(1).uniform(size=(3, 16, 16, 3)), tf.float32)
  out = augment.random_gaussian_blur(
      images, tf.constant([False, True, False]), tf.constant([1.0, 1.0, 1.0]), max_sigma=1.0
  ).numpy()
  np.testing.assert_array_equal(out[0], images[0].numpy())
  np.testing.assert_array_equal(out[2], images[2].numpy())
  np.testing.assert_allclose(out[1], _reference_blur(images[1], 1.0, 1.0), atol=1e-5)
  none = augment.random_gaussian_blur(images, tf.zeros([3], tf.bool), tf.ones([3]), max_sigma=1.0)
  np.testing.assert_array_equal(none.numpy(), images.numpy())


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
