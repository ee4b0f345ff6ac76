"""Multi-crop views of one image: global and local crops with the recipe's augmentations."""

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


def make_view(
    image: tf.Tensor, seed: tf.Tensor, view: ViewRecipe, recipe: MultiCropRecipe
) -> tf.Tensor:
  """Returns one augmented, normalised crop `[view.size, view.size, 3]` float32.

  Args:
    image: `[height, width, 3]` uint8, the decoded source image.
    seed: `[2] int32` stateless seed of this view.
  """
  crop = augment.random_resized_crop(
      image,
      augment.fold_seed(seed, 0),
      size=view.size,
      scale=view.scale,
      aspect_ratio=recipe.aspect_ratio,
      method=recipe.resize_method,
  )
  crop = augment.random_flip(crop, augment.fold_seed(seed, 1), recipe.flip_probability)

  if recipe.color_jitter_probability > 0.0:
    jitter_seed = augment.fold_seed(seed, 2)
    crop = tf.cond(
        augment.random_coin(augment.fold_seed(jitter_seed, 0), recipe.color_jitter_probability),
        lambda: augment.color_jitter(
            crop,
            augment.fold_seed(jitter_seed, 1),
            brightness=recipe.brightness,
            contrast=recipe.contrast,
            saturation=recipe.saturation,
            hue=recipe.hue,
            color=recipe.color,
        ),
        lambda: crop,
    )
  if recipe.color and recipe.grayscale_probability > 0.0:
    crop = tf.cond(
        augment.random_coin(augment.fold_seed(seed, 3), recipe.grayscale_probability),
        lambda: augment.to_grayscale(crop),
        lambda: crop,
    )

  crop = augment.random_gaussian_blur(
      crop, augment.fold_seed(seed, 4), probability=view.blur_probability, sigma=recipe.blur_sigma
  )
  crop = augment.random_solarize(
      crop,
      augment.fold_seed(seed, 5),
      probability=view.solarize_probability,
      threshold=recipe.solarize_threshold,
  )
  crop = augment.normalize(crop, recipe.mean, recipe.std)
  crop.set_shape([view.size, view.size, 3])
  return crop


def make_views(image: tf.Tensor, seed: tf.Tensor, recipe: MultiCropRecipe) -> dict[str, tf.Tensor]:
  """Returns the crops of one image.

  Args:
    image: `[height, width, 3]` uint8.
    seed: `[2] int32` stateless seed of this image; view `v` uses `fold_seed(seed, v)`.

  Returns:
    "global_crops": `[G, Hg, Wg, 3]` float32 and, when the recipe has local crops,
    "local_crops": `[L, Hl, Wl, 3]` float32, both normalised.
  """
  views = {
      "global_crops": tf.stack(
          [
              make_view(image, augment.fold_seed(seed, v), view, recipe)
              for v, view in enumerate(recipe.global_views)
          ]
      )
  }
  if recipe.local_views:
    offset = len(recipe.global_views)
    views["local_crops"] = tf.stack(
        [
            make_view(image, augment.fold_seed(seed, offset + v), view, recipe)
            for v, view in enumerate(recipe.local_views)
        ]
    )
  return views
