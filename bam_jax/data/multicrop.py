"""Multi-crop views: global and local crops with the recipe's augmentations.

Views are made in two steps. `crop_views` cuts the crops of one image, and `augment_views`
applies the photometric operations to a whole batch of small crops. Large crops get their
photometric operations in `crop_views`, one crop at a time.
"""

import dataclasses
from typing import Sequence

import ml_collections
import tensorflow as tf

from bam_jax.data import augment


@dataclasses.dataclass(frozen=True)
class ViewRecipe:
  """Augmentation settings of one crop."""

  size: int
  scale: tuple[float, float]
  blur_probability: float
  solarize_probability: float


@dataclasses.dataclass(frozen=True)
class MultiCropRecipe:
  """All settings of the multi-crop augmentation, validated from the data config."""

  global_views: tuple[ViewRecipe, ...]
  local_views: tuple[ViewRecipe, ...]
  aspect_ratio: tuple[float, float]
  resize_method: str
  flip_probability: float
  color_jitter_probability: float
  brightness: float
  contrast: float
  saturation: float
  hue: float
  grayscale_probability: float
  blur_sigma: tuple[float, float]
  solarize_threshold: float
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  color: bool


def _pair(config: ml_collections.ConfigDict, name: str) -> tuple[float, float]:
  value = tuple(float(v) for v in config[name])
  if len(value) != 2 or not 0.0 <= value[0] <= value[1]:
    raise ValueError(
        f"data.{name}={config[name]!r} is invalid: expected (min, max) with 0 <= min <= max."
    )
  return value


def _probability(name: str, value: float) -> float:
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"data.{name}={value!r} is invalid: a probability must be in [0, 1].")
  return float(value)


def recipe_from_config(config: ml_collections.ConfigDict, *, color: bool) -> MultiCropRecipe:
  """Builds the multi-crop recipe from the data config.

  Args:
    config: data config (see `bam_jax.data.config.default_config`).
    color: the source has colour; `config.color_augmentation`, when set, overrides it.

  Raises:
    ValueError: a field is out of range or a per-global-crop tuple has the wrong length.
  """
  num_global = int(config.num_global_crops)
  num_local = int(config.num_local_crops)
  if num_global < 1:
    raise ValueError(f"data.num_global_crops={num_global} is invalid: at least 1 is needed.")
  if num_local < 0:
    raise ValueError(f"data.num_local_crops={num_local} is invalid: it must be >= 0.")
  for name in ("blur_probability_global", "solarize_probability_global"):
    if len(config[name]) != num_global:
      raise ValueError(
          f"data.{name}={tuple(config[name])!r} has {len(config[name])} entries but "
          f"data.num_global_crops={num_global}: give one probability per global crop."
      )
  for name in ("global_crop_size", "local_crop_size"):
    if config[name] < 1:
      raise ValueError(f"data.{name}={config[name]} is invalid: the crop side must be >= 1 pixel.")
  for name in ("mean", "std"):
    if len(config[name]) != 3:
      raise ValueError(f"data.{name}={tuple(config[name])!r} is invalid: give 3 channel values.")
  if min(config.std) <= 0:
    raise ValueError(f"data.std={tuple(config.std)!r} is invalid: every entry must be > 0.")

  global_scale = _pair(config, "global_crop_scale")
  local_scale = _pair(config, "local_crop_scale")
  global_views = tuple(
      ViewRecipe(
          size=int(config.global_crop_size),
          scale=global_scale,
          blur_probability=_probability("blur_probability_global", config.blur_probability_global[i]),
          solarize_probability=_probability(
              "solarize_probability_global", config.solarize_probability_global[i]
          ),
      )
      for i in range(num_global)
  )
  local_view = ViewRecipe(
      size=int(config.local_crop_size),
      scale=local_scale,
      blur_probability=_probability("blur_probability_local", config.blur_probability_local),
      solarize_probability=0.0,
  )
  if config.color_augmentation is not None:
    color = bool(config.color_augmentation)
  return MultiCropRecipe(
      global_views=global_views,
      local_views=(local_view,) * num_local,
      aspect_ratio=_pair(config, "crop_aspect_ratio"),
      resize_method=str(config.resize_method),
      flip_probability=_probability("flip_probability", config.flip_probability),
      color_jitter_probability=_probability(
          "color_jitter_probability", config.color_jitter_probability
      ),
      brightness=float(config.brightness),
      contrast=float(config.contrast),
      saturation=float(config.saturation),
      hue=float(config.hue),
      grayscale_probability=_probability("grayscale_probability", config.grayscale_probability),
      blur_sigma=_pair(config, "blur_sigma"),
      solarize_threshold=float(config.solarize_threshold),
      mean=tuple(float(v) for v in config.mean),
      std=tuple(float(v) for v in config.std),
      color=color,
  )


# Columns of a view's photometric uniform draws, after the `augment.CROP_UNIFORMS` crop draws.
_FLIP = 0
_JITTER = 1
_FACTORS = slice(2, 6)  # brightness, contrast, saturation, hue
_ORDER = slice(6, 10)  # sort keys of the jitter operations
_GRAYSCALE = 10
_BLUR = 11
_SIGMA = 12
_SOLARIZE = 13
PHOTOMETRIC_UNIFORMS = 14
# Crops of at least this side get their photometric operations one crop at a time, in
# `crop_views`. Smaller crops get them batched, in `augment_views`, because per-op overhead
# dominates their cost and batching shares it. For large crops the pixel work dominates, so the
# per-crop path wins by computing only the operations that each crop draws.
# NOTE: the threshold comes from timing benchmarks/input_pipeline.py on a 2-core CPU with the
# crop sizes of the two recipes (224, 96, 28 and 16 px). Other sizes and machines may differ.
PER_CROP_MIN_SIZE = 128


def _view_groups(recipe: MultiCropRecipe) -> list[tuple[str, tuple[ViewRecipe, ...]]]:
  """Returns ("global", views) and, when there are local crops, ("local", views)."""
  groups = [("global", recipe.global_views)]
  if recipe.local_views:
    groups.append(("local", recipe.local_views))
  return groups


# Graph code with static Python loops only, so AutoGraph conversion is not needed.
@tf.autograph.experimental.do_not_convert
def crop_views(image: tf.Tensor, seed: tf.Tensor, recipe: MultiCropRecipe) -> dict[str, tf.Tensor]:
  """Cuts the random resized crops of one image and draws the random numbers of their views.

  Crops with a side of at least `PER_CROP_MIN_SIZE` are returned augmented and normalised.
  Smaller crops are returned with their uniform draws, and `augment_views` finishes them on
  whole batches, so their photometric operations run once per batch instead of once per crop.

  Args:
    image: `[height, width, 3]` uint8, the decoded source image.
    seed: `[2]` stateless seed of this image. All views draw from it in one call, global crops
      first.

  Returns:
    "global_crops": `[G, Hg, Wg, 3]` float32, and "global_uniforms":
    `[G, PHOTOMETRIC_UNIFORMS]` float32 in [0, 1) when the crops are smaller than
    `PER_CROP_MIN_SIZE` (the crops are then in [0, 1], not yet augmented). The same "local_"
    entries follow when the recipe has local crops.
  """
  num_views = len(recipe.global_views) + len(recipe.local_views)
  uniforms = tf.random.stateless_uniform(
      [num_views, augment.CROP_UNIFORMS + PHOTOMETRIC_UNIFORMS], seed, dtype=tf.float32
  )
  outputs = {}
  first = 0
  for name, views in _view_groups(recipe):
    group = uniforms[first:first + len(views)]
    first += len(views)
    begin, size = augment.sample_crop_boxes(
        tf.shape(image),
        group[:, :augment.CROP_UNIFORMS],
        scale=views[0].scale,
        aspect_ratio=recipe.aspect_ratio,
    )
    crops = augment.resized_crops(
        image, begin, size, output_size=views[0].size, method=recipe.resize_method
    )
    photometric = group[:, augment.CROP_UNIFORMS:]
    if views[0].size >= PER_CROP_MIN_SIZE:
      outputs[f"{name}_crops"] = tf.stack(
          [_augment_one_crop(crops[v], photometric[v], view, recipe) for v, view in enumerate(views)]
      )
    else:
      outputs[f"{name}_crops"] = crops
      outputs[f"{name}_uniforms"] = photometric
  return outputs


def _jitter_parameters(
    uniforms: tf.Tensor, recipe: MultiCropRecipe
) -> tuple[tf.Tensor, tf.Tensor]:
  """Returns the jitter factors `[n, 4]` and operation order `[n, k] int32` of `uniforms`."""
  num_operations = 4 if recipe.color else 2
  low = tf.constant(
      [1.0 - recipe.brightness, 1.0 - recipe.contrast, 1.0 - recipe.saturation, -recipe.hue]
  )
  high = tf.constant(
      [1.0 + recipe.brightness, 1.0 + recipe.contrast, 1.0 + recipe.saturation, recipe.hue]
  )
  factors = low + (high - low) * uniforms[:, _FACTORS]
  # The argsort of uniform keys is a uniformly random permutation of the operations.
  order = tf.argsort(uniforms[:, _ORDER][:, :num_operations], axis=1, stable=True)
  return factors, tf.cast(order, tf.int32)


def _augment_one_crop(
    crop: tf.Tensor, uniforms: tf.Tensor, view: ViewRecipe, recipe: MultiCropRecipe
) -> tf.Tensor:
  """Augments one crop `[S, S, 3]` as `augment_crops` does, from its `uniforms: [k]`.

  This is the path for large crops: tf.cond skips every operation that the crop did not draw,
  and with a single image no gather or scatter is needed. Per-op overhead is small next to
  the pixel work of a large crop.
  """
  images = crop[tf.newaxis]
  row = uniforms[tf.newaxis]

  def maybe(draw: tf.Tensor, probability: float, operation) -> tf.Tensor:
    return tf.cond(draw < probability, lambda: operation(images), lambda: images)

  images = maybe(uniforms[_FLIP], recipe.flip_probability, lambda x: tf.reverse(x, [2]))

  if recipe.color_jitter_probability > 0.0:
    factors, order = _jitter_parameters(row, recipe)
    operations = [
        augment.adjust_brightness, augment.adjust_contrast, augment.adjust_saturation,
        augment.adjust_hue,
    ][:order.shape[1]]

    def jitter(x: tf.Tensor) -> tf.Tensor:
      for position in range(order.shape[1]):
        branches = [
            lambda x=x, op=op, i=i: op(x, factors[:, i]) for i, op in enumerate(operations)
        ]
        x = tf.switch_case(order[0, position], branches)
        x.set_shape(images.shape)
      return x

    images = maybe(uniforms[_JITTER], recipe.color_jitter_probability, jitter)

  if recipe.color and recipe.grayscale_probability > 0.0:
    images = maybe(uniforms[_GRAYSCALE], recipe.grayscale_probability, augment.to_grayscale)

  if view.blur_probability > 0.0:
    low, high = recipe.blur_sigma
    sigma = low + (high - low) * row[:, _SIGMA]
    images = maybe(
        uniforms[_BLUR], view.blur_probability,
        lambda x: augment.gaussian_blur(x, sigma, max_sigma=high),
    )

  if view.solarize_probability > 0.0:
    images = maybe(
        uniforms[_SOLARIZE], view.solarize_probability,
        lambda x: augment.solarize(x, recipe.solarize_threshold),
    )
  return augment.normalize(images, recipe.mean, recipe.std)[0]


def augment_crops(
    crops: tf.Tensor,
    uniforms: tf.Tensor,
    views: Sequence[ViewRecipe],
    recipe: MultiCropRecipe,
) -> tf.Tensor:
  """Applies flip, colour jitter, grayscale, blur, solarisation and normalisation to crops.

  Args:
    crops: `[batch, V, height, width, 3]` float32 in [0, 1], V = len(views), static height and
      width.
    uniforms: `[batch, V, PHOTOMETRIC_UNIFORMS]` float32 in [0, 1), from `crop_views`.
    views: the recipes of the V views, in order.

  Returns:
    `[batch, V, height, width, 3]` float32, normalised with `recipe.mean` and `recipe.std`.
  """
  height, width = crops.shape[2], crops.shape[3]
  images = tf.reshape(crops, [-1, height, width, 3])
  uniforms = tf.reshape(uniforms, [-1, PHOTOMETRIC_UNIFORMS])
  batch = tf.shape(crops)[0]

  def per_view(values: list[float]) -> tf.Tensor:
    # Crops are ordered (image, view), so tiling the per-view values matches them.
    return tf.tile(tf.constant(values, tf.float32), [batch])

  images = augment.flip_left_right(images, uniforms[:, _FLIP] < recipe.flip_probability)

  if recipe.color_jitter_probability > 0.0:
    factors, order = _jitter_parameters(uniforms, recipe)
    images = augment.color_jitter(
        images,
        uniforms[:, _JITTER] < recipe.color_jitter_probability,
        factors,
        order,
        color=recipe.color,
    )

  if recipe.color and recipe.grayscale_probability > 0.0:
    images = augment.random_grayscale(images, uniforms[:, _GRAYSCALE] < recipe.grayscale_probability)

  blur_probability = [view.blur_probability for view in views]
  if max(blur_probability) > 0.0:
    low, high = recipe.blur_sigma
    images = augment.random_gaussian_blur(
        images,
        uniforms[:, _BLUR] < per_view(blur_probability),
        low + (high - low) * uniforms[:, _SIGMA],
        max_sigma=high,
    )

  solarize_probability = [view.solarize_probability for view in views]
  if max(solarize_probability) > 0.0:
    images = augment.random_solarize(
        images,
        uniforms[:, _SOLARIZE] < per_view(solarize_probability),
        threshold=recipe.solarize_threshold,
    )

  images = augment.normalize(images, recipe.mean, recipe.std)
  return tf.reshape(images, [-1, len(views), height, width, 3])


# Graph code with static Python loops only, so AutoGraph conversion is not needed.
@tf.autograph.experimental.do_not_convert
def augment_views(batch: dict[str, tf.Tensor], recipe: MultiCropRecipe) -> dict[str, tf.Tensor]:
  """Finishes a batch of `crop_views` outputs; other entries of `batch` pass through.

  Args:
    batch: "global_crops" `[b, G, Hg, Wg, 3]` and, for small crops, "global_uniforms"
      `[b, G, k]`, and the same "local_" entries when the recipe has local crops, as batched
      from `crop_views`.

  Returns:
    `batch` with the "_uniforms" entries removed and the crops augmented and normalised.
  """
  outputs = dict(batch)
  for name, views in _view_groups(recipe):
    if f"{name}_uniforms" not in outputs:
      continue  # Large crops, already augmented by `crop_views`.
    outputs[f"{name}_crops"] = augment_crops(
        outputs[f"{name}_crops"], outputs.pop(f"{name}_uniforms"), views, recipe
    )
  return outputs


def make_views(image: tf.Tensor, seed: tf.Tensor, recipe: MultiCropRecipe) -> dict[str, tf.Tensor]:
  """Returns the augmented crops of one image (`crop_views`, then `augment_views`).

  Args:
    image: `[height, width, 3]` uint8.
    seed: `[2]` stateless seed of this image.

  Returns:
    "global_crops": `[G, Hg, Wg, 3]` float32 and, when the recipe has local crops,
    "local_crops": `[L, Hl, Wl, 3]` float32, both normalised. They equal the pipeline's views
    of the same image and seed.
  """
  crops = crop_views(image, seed, recipe)
  batch = {key: value[tf.newaxis] for key, value in crops.items()}
  return {key: value[0] for key, value in augment_views(batch, recipe).items()}
