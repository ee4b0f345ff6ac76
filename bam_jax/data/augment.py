"""Image augmentations of the multi-crop recipe as TF functions.

Crop sampling works on one image, because every crop box has its own size. The photometric
operations (flip, colour jitter, grayscale, blur, solarisation, normalisation) work on a batch
of same-size crops `[n, height, width, 3] float32` in [0, 1] with one random parameter per
crop. tf.data then runs each of them once per batch instead of once per crop. Randomness
arrives as uniform draws in [0, 1) that the caller takes from stateless seeds, so the same
seed gives the same crop on any host and in any thread.
"""

import math
from typing import Sequence

import tensorflow as tf

# Attempts of the crop-box sampler before it falls back to a central crop (torchvision's value).
CROP_ATTEMPTS = 10
# Uniform draws that `sample_crop_boxes` takes per box: area and ratio per attempt, then the
# vertical and horizontal offsets.
CROP_UNIFORMS = 2 * CROP_ATTEMPTS + 2


def fold_seed(seed: tf.Tensor, value: int | tf.Tensor) -> tf.Tensor:
  """Returns a new `[2]` seed derived from `seed` and `value`."""
  return tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64), alg="philox")


def sample_crop_boxes(
    image_shape: tf.Tensor,
    uniforms: tf.Tensor,
    *,
    scale: Sequence[float],
    aspect_ratio: Sequence[float],
) -> tuple[tf.Tensor, tf.Tensor]:
  """Samples crop boxes of one image as torchvision's RandomResizedCrop does.

  Each of `CROP_ATTEMPTS` attempts draws an area uniformly from `scale` times the image area
  and a width / height ratio log-uniformly from `aspect_ratio`. The first box that fits is
  placed uniformly at random. When no attempt fits, the box is the largest central crop whose
  ratio is clamped to `aspect_ratio`.

  Args:
    image_shape: `[3] int32`, (height, width, channels).
    uniforms: `[boxes, CROP_UNIFORMS] float32` uniform draws in [0, 1), one row per box.
    scale: (min, max) fraction of the image area.
    aspect_ratio: (min, max) width / height of the box.

  Returns:
    (begin, size), each `[boxes, 2] int32` as (row, column) and (height, width) in pixels.
  """
  height = tf.cast(image_shape[0], tf.float32)
  width = tf.cast(image_shape[1], tf.float32)
  area_uniform = uniforms[:, :CROP_ATTEMPTS]
  ratio_uniform = uniforms[:, CROP_ATTEMPTS:2 * CROP_ATTEMPTS]
  offsets = uniforms[:, 2 * CROP_ATTEMPTS:]

  area = height * width * (scale[0] + (scale[1] - scale[0]) * area_uniform)
  log_low, log_high = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
  ratio = tf.exp(log_low + (log_high - log_low) * ratio_uniform)
  box_w = tf.round(tf.sqrt(area * ratio))
  box_h = tf.round(tf.sqrt(area / ratio))
  fits = (box_w >= 1) & (box_h >= 1) & (box_w <= width) & (box_h <= height)

  image_ratio = width / height
  fallback_w = tf.where(image_ratio > aspect_ratio[1], tf.round(height * aspect_ratio[1]), width)
  fallback_h = tf.where(image_ratio < aspect_ratio[0], tf.round(width / aspect_ratio[0]), height)
  first = tf.argmax(tf.cast(fits, tf.int32), axis=1)
  any_fits = tf.reduce_any(fits, axis=1)
  crop_w = tf.where(any_fits, tf.gather(box_w, first, batch_dims=1), fallback_w)
  crop_h = tf.where(any_fits, tf.gather(box_h, first, batch_dims=1), fallback_h)

  top = tf.where(
      any_fits, tf.floor(offsets[:, 0] * (height - crop_h + 1)), tf.floor((height - crop_h) / 2)
  )
  left = tf.where(
      any_fits, tf.floor(offsets[:, 1] * (width - crop_w + 1)), tf.floor((width - crop_w) / 2)
  )
  begin = tf.cast(tf.stack([top, left], axis=1), tf.int32)
  size = tf.cast(tf.stack([crop_h, crop_w], axis=1), tf.int32)
  return begin, size


def resized_crops(
    image: tf.Tensor,
    begin: tf.Tensor,
    size: tf.Tensor,
    *,
    output_size: int,
    method: str = "bicubic",
) -> tf.Tensor:
  """Cuts the boxes `(begin, size)` out of `image` and resizes each to `output_size` pixels.

  Args:
    image: `[height, width, 3]` uint8, any size; boxes smaller than `output_size` are upscaled.
    begin: `[boxes, 2] int32` (row, column) of each box, from `sample_crop_boxes`.
    size: `[boxes, 2] int32` (height, width) of each box.
    output_size: output side in pixels.
    method: `tf.image.ResizeMethod` value.

  Returns:
    `[boxes, output_size, output_size, 3]` float32 in [0, 1].
  """
  num_boxes = begin.shape[0]
  crops = []
  for box in range(num_boxes):
    crop = tf.slice(
        image, tf.concat([begin[box], [0]], 0), tf.concat([size[box], [-1]], 0)
    )
    # Resizing uint8 gives float32 in [0, 255], which saves a conversion per crop.
    crops.append(tf.image.resize(crop, (output_size, output_size), method=method))
  crops = tf.stack(crops) * (1.0 / 255.0)
  crops.set_shape([num_boxes, output_size, output_size, image.shape[-1]])
  # Bicubic interpolation overshoots at edges.
  return tf.clip_by_value(crops, 0.0, 1.0)


def _per_image(values: tf.Tensor) -> tf.Tensor:
  """Reshapes `[n]` to `[n, 1, 1, 1]`, to broadcast one value per image over its pixels."""
  return values[:, tf.newaxis, tf.newaxis, tf.newaxis]


# NOTE: on CPU, tf.where with a broadcast condition and strided reverse slices cost several
# times more per pixel than arithmetic (measured with tensorflow-cpu 2.21). The random
# operations below therefore gather the selected images, change them and scatter them back,
# or blend arithmetically, instead of selecting with tf.where over the whole batch.
def _update_selected(images: tf.Tensor, select: tf.Tensor, update) -> tf.Tensor:
  """Replaces the images where `select: [n] bool` is set by `update(selected, index)`.

  `update` receives the selected images `[m, ...]` and their batch positions `[m, 1] int64`.
  """
  index = tf.where(select)
  return tf.tensor_scatter_nd_update(images, index, update(tf.gather_nd(images, index), index))


def flip_left_right(images: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
  """Flips the images where `flip: [n] bool` is set; `images: [n, height, width, channels]`."""
  return _update_selected(images, flip, lambda selected, _: tf.reverse(selected, [2]))


def to_grayscale(images: tf.Tensor) -> tf.Tensor:
  """Returns the ITU-R 601 luma of `images: [..., 3]`, repeated on 3 channels."""
  return tf.tile(tf.image.rgb_to_grayscale(images), [1] * (images.shape.rank - 1) + [3])


def random_grayscale(images: tf.Tensor, apply: tf.Tensor) -> tf.Tensor:
  """Converts the images where `apply: [n] bool` is set to grayscale (kept as 3 channels)."""
  return _update_selected(images, apply, lambda selected, _: to_grayscale(selected))


def _blend(images: tf.Tensor, base: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  return tf.clip_by_value((images - base) * factor + base, 0.0, 1.0)


def _mean_gray(images: tf.Tensor) -> tf.Tensor:
  """Returns the mean luma `[n, 1, 1, 1]`: the luma of the mean colour, since luma is linear."""
  mean_color = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
  return tf.image.rgb_to_grayscale(mean_color)


def adjust_brightness(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Scales all pixels by `factor: [n]` (multiplicative, as torchvision's ColorJitter)."""
  return tf.clip_by_value(images * _per_image(factor), 0.0, 1.0)


def adjust_contrast(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends each image with its mean gray level; factor 0 gives a uniform gray image."""
  return _blend(images, _mean_gray(images), _per_image(factor))


def adjust_saturation(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends each image with its grayscale version; factor 0 gives grayscale."""
  return _blend(images, tf.image.rgb_to_grayscale(images), _per_image(factor))


# Images of at least this many pixels take the fused `tf.image.adjust_hue` kernel, one image
# at a time. Smaller ones take the batched HSV round trip, because the batch shares its per-op
# cost. The fused kernel costs about 1.2 ms per 224 px crop against 3.1 ms for the round trip
# (tensorflow-cpu 2.21, 2-core CPU).
_FUSED_HUE_MIN_PIXELS = 64 * 64


def adjust_hue(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """Rotates the HSV hue of each image by `delta: [n]` turns, as `tf.image.adjust_hue` does."""
  if images.shape[1] * images.shape[2] >= _FUSED_HUE_MIN_PIXELS:
    shifted = tf.map_fn(
        lambda pair: tf.image.adjust_hue(pair[0], pair[1]),
        (images, delta),
        fn_output_signature=tf.float32,
    )
    # An empty selection comes back as shape [0], so the shape is restored.
    return tf.clip_by_value(tf.reshape(shifted, tf.shape(images)), 0.0, 1.0)
  hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(images), axis=-1)
  hue = tf.math.floormod(hue + delta[:, tf.newaxis, tf.newaxis], 1.0)
  rgb = tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1))
  return tf.clip_by_value(rgb, 0.0, 1.0)


# Operation ids of `color_jitter`, the positions of their factors in `factors`.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def _jitter_step(
    images: tf.Tensor, operation: tf.Tensor, factors: tf.Tensor, color: bool
) -> tf.Tensor:
  """Applies operation `operation[i]` to image i; -1 leaves the image unchanged."""
  # Brightness and contrast both blend the image with a constant (black, the mean gray level),
  # so one blend serves both. Other images get factor 1 and base 0, which leaves them exact.
  is_brightness = operation == BRIGHTNESS
  is_contrast = operation == CONTRAST
  factor = tf.where(is_brightness, factors[:, BRIGHTNESS], 1.0)
  factor = tf.where(is_contrast, factors[:, CONTRAST], factor)
  base = _mean_gray(images) * _per_image(tf.cast(is_contrast, tf.float32))
  images = _blend(images, base, _per_image(factor))
  if not color:
    return images

  # Saturation and the HSV round trip need per-pixel work, so they run only on the images that
  # draw them.
  images = _update_selected(
      images,
      operation == SATURATION,
      lambda selected, index: adjust_saturation(selected, tf.gather_nd(factors[:, SATURATION], index)),
  )
  return _update_selected(
      images,
      operation == HUE,
      lambda selected, index: adjust_hue(selected, tf.gather_nd(factors[:, HUE], index)),
  )


def color_jitter(
    images: tf.Tensor,
    apply: tf.Tensor,
    factors: tf.Tensor,
    order: tf.Tensor,
    *,
    color: bool = True,
) -> tf.Tensor:
  """Applies brightness, contrast, saturation and hue changes, in a per-image order.

  With `color=False` (grayscale sources) only brightness and contrast are applied, because
  saturation and hue do not change a gray image.

  Args:
    images: `[n, height, width, 3]` float32 in [0, 1].
    apply: `[n] bool`, the images to change.
    factors: `[n, 4] float32`, the brightness, contrast and saturation factors and the hue shift
      in turns, in that order (the `BRIGHTNESS`, ..., `HUE` ids).
    order: `[n, k] int32`, a permutation of the operation ids per image (k = 4, or 2 with
      `color=False`).

  Returns:
    `[n, height, width, 3]` float32 in [0, 1].
  """
  for position in range(order.shape[1]):
    operation = tf.where(apply, order[:, position], -1)
    images = _jitter_step(images, operation, factors, color)
  return images


def _padding_indices(size: int, radius: int) -> list[int]:
  """Returns the source index of each of `size + 2 * radius` padded positions.

  The padding reflects the edge (as `tf.pad` mode "REFLECT"), and where `radius` is not
  smaller than `size` it continues symmetrically (mode "SYMMETRIC").
  """
  indices = list(range(size))
  reflect = min(radius, size - 1)
  if reflect:
    indices = indices[1:reflect + 1][::-1] + indices + indices[-reflect - 1:-1][::-1]
  symmetric = radius - reflect
  if symmetric:
    indices = indices[:symmetric][::-1] + indices + indices[-symmetric:][::-1]
  return indices


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, *, max_sigma: float) -> tf.Tensor:
  """Blurs each image with a separable Gaussian of `sigma: [n]` pixels, reflect-padded.

  The kernel radius is ceil(3 * max_sigma), so it covers 3 sigma for every sampled sigma.

  Args:
    images: `[n, height, width, channels]` float32, n >= 1, static height, width and channels.

  Returns:
    `[n, height, width, channels]` float32.
  """
  radius = max(1, int(math.ceil(3.0 * max_sigma)))
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-0.5 * tf.square(offsets / sigma[:, tf.newaxis]))
  kernel /= tf.reduce_sum(kernel, axis=1, keepdims=True)

  _, height, width, channels = images.shape
  # One depthwise convolution with a kernel per (image, channel) pair blurs every image with
  # its own sigma: the images are moved into the channel axis of a single-image batch.
  stacked = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, height, width, -1])
  stacked = tf.gather(stacked, _padding_indices(height, radius), axis=1)
  stacked = tf.gather(stacked, _padding_indices(width, radius), axis=2)
  channel_kernel = tf.transpose(tf.repeat(kernel, channels, axis=0))  # [taps, n * channels]
  vertical = tf.reshape(channel_kernel, [2 * radius + 1, 1, -1, 1])
  horizontal = tf.reshape(channel_kernel, [1, 2 * radius + 1, -1, 1])
  stacked = tf.nn.depthwise_conv2d(stacked, vertical, [1, 1, 1, 1], "VALID")
  stacked = tf.nn.depthwise_conv2d(stacked, horizontal, [1, 1, 1, 1], "VALID")
  return tf.transpose(tf.reshape(stacked, [height, width, -1, channels]), [2, 0, 1, 3])


def random_gaussian_blur(
    images: tf.Tensor, apply: tf.Tensor, sigma: tf.Tensor, *, max_sigma: float
) -> tf.Tensor:
  """Blurs the images where `apply: [n] bool` is set, with `sigma: [n]` pixels each."""

  def blur_selected(selected, index):
    # A convolution over zero channels is invalid, so an empty selection skips it.
    return tf.cond(
        tf.shape(selected)[0] > 0,
        lambda: gaussian_blur(selected, tf.gather_nd(sigma, index), max_sigma=max_sigma),
        lambda: selected,
    )

  return _update_selected(images, apply, blur_selected)


def solarize(images: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
  """Inverts the pixels at or above `threshold`."""
  return tf.where(images < threshold, images, 1.0 - images)


def random_solarize(images: tf.Tensor, apply: tf.Tensor, *, threshold: float) -> tf.Tensor:
  """Solarizes the images where `apply: [n] bool` is set."""
  return _update_selected(images, apply, lambda selected, _: solarize(selected, threshold))


def normalize(images: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """Returns `(images - mean) / std` per channel; `images: [..., width, 3]` float32 in [0, 1]."""
  width = images.shape[-2]
  # Broadcasting over a long last axis is several times faster on CPU than over 3 channels.
  scale = tf.tile(1.0 / tf.constant(std, tf.float32), [width])
  offset = tf.tile(-tf.constant(mean, tf.float32) / tf.constant(std, tf.float32), [width])
  flat_shape = tf.concat([tf.shape(images)[:-2], [width * 3]], 0)
  normalized = tf.reshape(images, flat_shape) * scale + offset
  return tf.reshape(normalized, tf.shape(images))
