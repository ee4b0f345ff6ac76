"""Image augmentations of the multi-crop recipe as stateless TF functions.

Every function takes and returns one image `[height, width, 3] float32` in [0, 1] (except
`normalize`) and draws its randomness from a `seed: [2] int32` stateless seed, so the same seed
gives the same view on any host and in any thread.
"""

import math
from typing import Sequence

import tensorflow as tf


def fold_seed(seed: tf.Tensor, value: int | tf.Tensor) -> tf.Tensor:
  """Returns a new `[2] int32` seed derived from `seed` and `value`."""
  return tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64), alg="philox")


def _uniform(seed: tf.Tensor, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, minval=low, maxval=high, dtype=tf.float32)


def random_coin(seed: tf.Tensor, probability: float) -> tf.Tensor:
  return _uniform(seed) < probability


def sample_crop_box(
    image_shape: tf.Tensor,
    seed: tf.Tensor,
    *,
    scale: Sequence[float],
    aspect_ratio: Sequence[float],
    attempts: int = 10,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Samples a crop box as torchvision's RandomResizedCrop does.

  Each attempt draws an area uniformly from `scale` times the image area and a width / height
  ratio log-uniformly from `aspect_ratio`; the first box that fits is placed uniformly at
  random. When no attempt fits, the box is the largest central crop whose ratio is clamped to
  `aspect_ratio`.

  Args:
    image_shape: `[3] int32`, (height, width, channels).
    seed: `[2] int32` stateless seed.

  Returns:
    (begin, size), each `[3] int32` for `tf.slice`.
  """
  height = tf.cast(image_shape[0], tf.float32)
  width = tf.cast(image_shape[1], tf.float32)
  area = height * width * tf.random.stateless_uniform(
      [attempts], fold_seed(seed, 0), minval=scale[0], maxval=scale[1]
  )
  log_ratio = tf.random.stateless_uniform(
      [attempts], fold_seed(seed, 1),
      minval=math.log(aspect_ratio[0]), maxval=math.log(aspect_ratio[1]),
  )
  ratio = tf.exp(log_ratio)
  box_w = tf.round(tf.sqrt(area * ratio))
  box_h = tf.round(tf.sqrt(area / ratio))
  fits = (box_w >= 1) & (box_h >= 1) & (box_w <= width) & (box_h <= height)

  image_ratio = width / height
  fallback_w = tf.where(image_ratio > aspect_ratio[1], tf.round(height * aspect_ratio[1]), width)
  fallback_h = tf.where(image_ratio < aspect_ratio[0], tf.round(width / aspect_ratio[0]), height)
  first = tf.argmax(tf.cast(fits, tf.int32))
  any_fits = tf.reduce_any(fits)
  crop_w = tf.where(any_fits, tf.gather(box_w, first), fallback_w)
  crop_h = tf.where(any_fits, tf.gather(box_h, first), fallback_h)

  offsets = tf.random.stateless_uniform([2], fold_seed(seed, 2))
  top = tf.where(any_fits, tf.floor(offsets[0] * (height - crop_h + 1)), tf.floor((height - crop_h) / 2))
  left = tf.where(any_fits, tf.floor(offsets[1] * (width - crop_w + 1)), tf.floor((width - crop_w) / 2))
  begin = tf.stack([tf.cast(top, tf.int32), tf.cast(left, tf.int32), 0])
  size = tf.stack([tf.cast(crop_h, tf.int32), tf.cast(crop_w, tf.int32), -1])
  return begin, size


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    scale: Sequence[float],
    aspect_ratio: Sequence[float],
    method: str = "bicubic",
) -> tf.Tensor:
  """Crops a random box (see `sample_crop_box`) and resizes it to `[size, size]`.

  Args:
    image: `[height, width, 3]` uint8 or float32 in [0, 1], any size; smaller images are
      upscaled.
    seed: `[2] int32` stateless seed.
    size: output side in pixels.
    scale: (min, max) fraction of the image area.
    aspect_ratio: (min, max) width / height of the box.
    method: `tf.image.ResizeMethod` value.

  Returns:
    `[size, size, 3]` float32 in [0, 1].
  """
  begin, box_size = sample_crop_box(tf.shape(image), seed, scale=scale, aspect_ratio=aspect_ratio)
  crop = tf.slice(image, begin, box_size)
  crop = tf.image.convert_image_dtype(crop, tf.float32)
  crop = tf.image.resize(crop, (size, size), method=method)
  # Bicubic interpolation overshoots at edges.
  return tf.clip_by_value(crop, 0.0, 1.0)


def random_flip(image: tf.Tensor, seed: tf.Tensor, probability: float = 0.5) -> tf.Tensor:
  """Flips `image` left-right with `probability`."""
  return tf.cond(random_coin(seed, probability), lambda: image[:, ::-1, :], lambda: image)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Returns the ITU-R 601 luma of `image` repeated on 3 channels."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Scales all pixels by `factor` (multiplicative, as torchvision's ColorJitter)."""
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends `image` with its mean gray level; factor 0 gives a uniform gray image."""
  mean = tf.reduce_mean(tf.image.rgb_to_grayscale(image))
  return tf.clip_by_value((image - mean) * factor + mean, 0.0, 1.0)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends `image` with its grayscale version; factor 0 gives grayscale."""
  gray = to_grayscale(image)
  return tf.clip_by_value((image - gray) * factor + gray, 0.0, 1.0)


def color_jitter(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    color: bool = True,
) -> tf.Tensor:
  """Applies brightness, contrast, saturation and hue changes in a random order.

  Factors are uniform in [1 - x, 1 + x] for brightness, contrast and saturation, and the hue
  shift is uniform in [-hue, hue] turns. With `color=False` (grayscale sources) only brightness
  and contrast are applied, because saturation and hue do not change a gray image.
  """
  brightness_factor = _uniform(fold_seed(seed, 0), 1.0 - brightness, 1.0 + brightness)
  contrast_factor = _uniform(fold_seed(seed, 1), 1.0 - contrast, 1.0 + contrast)
  saturation_factor = _uniform(fold_seed(seed, 2), 1.0 - saturation, 1.0 + saturation)
  hue_delta = _uniform(fold_seed(seed, 3), -hue, hue)

  branches = [
      lambda x: adjust_brightness(x, brightness_factor),
      lambda x: adjust_contrast(x, contrast_factor),
  ]
  if color:
    branches += [
        lambda x: adjust_saturation(x, saturation_factor),
        lambda x: tf.clip_by_value(tf.image.adjust_hue(x, hue_delta), 0.0, 1.0),
    ]
  order = tf.argsort(tf.random.stateless_uniform([len(branches)], fold_seed(seed, 4)))
  for position in range(len(branches)):
    operation = order[position]
    image = tf.switch_case(
        operation, [lambda f=f: f(image) for f in branches]
    )
    image.set_shape([None, None, 3])
  return image


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, *, max_sigma: float) -> tf.Tensor:
  """Blurs `image` with a separable Gaussian of `sigma` pixels, reflect-padded.

  The kernel radius is ceil(3 * max_sigma), so it covers 3 sigma for every sampled sigma.
  """
  radius = max(1, int(math.ceil(3.0 * max_sigma)))
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-0.5 * tf.square(offsets / sigma))
  kernel /= tf.reduce_sum(kernel)
  # Reflect padding needs the pad to be smaller than the image side.
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  pad_h = tf.minimum(radius, height - 1)
  pad_w = tf.minimum(radius, width - 1)
  padded = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
  padded = tf.pad(
      padded, [[radius - pad_h, radius - pad_h], [radius - pad_w, radius - pad_w], [0, 0]],
      mode="SYMMETRIC",
  )
  kernel_h = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
  kernel_w = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, 3, 1])
  blurred = tf.nn.depthwise_conv2d(padded[tf.newaxis], kernel_h, [1, 1, 1, 1], "VALID")
  blurred = tf.nn.depthwise_conv2d(blurred, kernel_w, [1, 1, 1, 1], "VALID")
  return blurred[0]


def random_gaussian_blur(
    image: tf.Tensor, seed: tf.Tensor, *, probability: float, sigma: Sequence[float]
) -> tf.Tensor:
  """Blurs with `probability`, with sigma uniform in `sigma` (pixels)."""
  if probability <= 0.0:
    return image
  sigma_value = _uniform(fold_seed(seed, 1), sigma[0], sigma[1])
  return tf.cond(
      random_coin(fold_seed(seed, 0), probability),
      lambda: gaussian_blur(image, sigma_value, max_sigma=sigma[1]),
      lambda: image,
  )


def solarize(image: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
  """Inverts the pixels at or above `threshold`."""
  return tf.where(image < threshold, image, 1.0 - image)


def random_solarize(
    image: tf.Tensor, seed: tf.Tensor, *, probability: float, threshold: float
) -> tf.Tensor:
  """Solarizes with `probability`."""
  if probability <= 0.0:
    return image
  return tf.cond(random_coin(seed, probability), lambda: solarize(image, threshold), lambda: image)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """Returns `(image - mean) / std` per channel; `image: [..., 3]` float32 in [0, 1]."""
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
