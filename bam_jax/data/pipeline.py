"""Host-local tf.data pipelines: multi-crop pre-training batches and padded evaluation batches."""

import math
from typing import Callable, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf

from bam_jax.data import augment
from bam_jax.data import multicrop
from bam_jax.data import sources

Batch = dict[str, np.ndarray]


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} and process_count={process_count} are invalid: "
        "expected 0 <= process_index < process_count."
    )
  return process_index, process_count


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  """Returns global_batch_size // process_count, raising ValueError when it does not divide."""
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} is not a positive multiple of the "
        f"process count {process_count}: choose a multiple of {process_count}."
    )
  return global_batch_size // process_count


def _apply_options(dataset: tf.data.Dataset, config: ml_collections.ConfigDict) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  if config.private_threadpool_size > 0:
    options.threading.private_threadpool_size = int(config.private_threadpool_size)
  return dataset.with_options(options)


def _log_skipped(stream_index: np.ndarray, state: dict[str, int], source_name: str) -> None:
  # The map is deterministic, so indices arrive in increasing order and a gap is a file that
  # failed to decode and was dropped by ignore_errors.
  skipped = int(stream_index[-1]) + 1 - state["seen"] - len(stream_index)
  state["seen"] += len(stream_index)
  if skipped > state["skipped"]:
    state["skipped"] = skipped
    logging.warning(
        "Skipped %d undecodable image files in %s so far (see the preceding tf.data warnings).",
        skipped, source_name,
    )


def make_pretrain_dataset(
    data_config: ml_collections.ConfigDict,
    *,
    host_batch: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> tuple[tf.data.Dataset, sources.Source]:
  """Builds the infinite multi-crop tf.data pipeline of one host.

  Elements: "global_crops" `[host_batch, G, Hg, Wg, 3]` float32, "local_crops"
  `[host_batch, L, Hl, Wl, 3]` float32 (when L > 0), "index" `[host_batch]` int64 (position
  in this host's example stream, which seeds the views).
  """
  source = sources.open_source(
      data_config, data_config.train_split, process_index=process_index,
      process_count=process_count, shuffle_files=bool(data_config.file_shuffle),
      seed=seed + process_index,
  )
  recipe = multicrop.recipe_from_config(data_config, color=source.channels == 3)
  host_seed = tf.constant([seed, process_index], tf.int64)

  dataset = source.dataset.repeat()
  if not source.from_files and data_config.shuffle_buffer_size > 1:
    # Image folders are fully shuffled as paths; TFDS examples are shuffled still encoded.
    dataset = dataset.shuffle(
        int(data_config.shuffle_buffer_size), seed=seed + process_index,
        reshuffle_each_iteration=True,
    )

  def to_crops(index, example):
    image = sources.decode_rgb(example["image"])
    crops = multicrop.crop_views(image, augment.fold_seed(host_seed, index), recipe)
    crops["index"] = index
    return crops

  num_parallel_calls = int(data_config.num_parallel_calls)
  dataset = dataset.enumerate().map(
      to_crops, num_parallel_calls=num_parallel_calls, deterministic=True
  )
  if source.from_files:
    dataset = dataset.ignore_errors(log_warning=True)
  dataset = dataset.batch(host_batch, drop_remainder=True)
  # The photometric operations run on whole batches: one op per batch costs far less CPU than
  # one per crop, because per-op overhead dominates for small crops.
  dataset = dataset.map(
      lambda batch: multicrop.augment_views(batch, recipe),
      num_parallel_calls=num_parallel_calls,
      deterministic=True,
  )
  dataset = dataset.prefetch(int(data_config.prefetch_batches))
  return _apply_options(dataset, data_config), source


def make_pretrain_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
  """Returns an endless iterator over this host's multi-crop batches.

  Each batch holds `global_batch_size // process_count` images:
    "global_crops": float32 `[b, G, Hg, Wg, 3]`, "local_crops": float32 `[b, L, Hl, Wl, 3]`
    (absent when `data_config.num_local_crops == 0`), normalised with `data_config.mean/std`.

  The same seed, config and host give the same batches; hosts read disjoint parts of the split.

  Raises:
    ValueError: the global batch does not divide by the process count, or a config field is
      invalid.
  """
  process_index, process_count = _process_layout(process_index, process_count)
  host_batch = host_batch_size(global_batch_size, process_count)
  dataset, source = make_pretrain_dataset(
      data_config, host_batch=host_batch, seed=seed, process_index=process_index,
      process_count=process_count,
  )
  source_name = data_config.image_folder or data_config.dataset
  logging.info(
      "Pre-training input: %s split %r, %d examples on host %d of %d, %d images per host batch.",
      source_name, data_config.train_split, source.num_examples, process_index, process_count,
      host_batch,
  )

  def generate() -> Iterator[Batch]:
    skip_state = {"seen": 0, "skipped": 0}
    for batch in dataset.as_numpy_iterator():
      index = batch.pop("index")
      if source.from_files:
        _log_skipped(index, skip_state, source_name)
      yield batch

  return generate()


def _resize_and_center_crop(image: tf.Tensor, size: int, crop_fraction: float) -> tf.Tensor:
  """Resizes the shorter side to size / crop_fraction, centre-crops `[size, size, 3]` float32."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  resize_to = float(size) / crop_fraction
  scale = resize_to / tf.reduce_min(shape)
  new_shape = tf.cast(tf.math.round(shape * scale), tf.int32)
  new_shape = tf.maximum(new_shape, size)
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.resize(image, new_shape, method="bicubic", antialias=True)
  top = (new_shape[0] - size) // 2
  left = (new_shape[1] - size) // 2
  image = image[top:top + size, left:left + size, :]
  image.set_shape([size, size, 3])
  return tf.clip_by_value(image, 0.0, 1.0)


def make_eval_dataset(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    host_batch: int,
    process_index: int,
    process_count: int,
) -> tf.data.Dataset:
  """Builds one padded pass over this host's part of `split` (see `make_eval_iterators`)."""
  size = int(data_config.eval_image_size)
  crop_fraction = float(data_config.eval_crop_fraction)
  if size < 1 or not 0.0 < crop_fraction <= 1.0:
    raise ValueError(
        f"data.eval_image_size={size} / data.eval_crop_fraction={crop_fraction} are invalid: "
        "expected a size >= 1 and a fraction in (0, 1]."
    )
  # Every host must run the same number of batches, so all pad to the largest host share.
  counts = [
      sources.open_source(
          data_config, split, process_index=p, process_count=process_count,
          shuffle_files=False, seed=0,
      ).num_examples
      if p != process_index else None
      for p in range(process_count)
  ]
  source = sources.open_source(
      data_config, split, process_index=process_index, process_count=process_count,
      shuffle_files=False, seed=0,
  )
  counts[process_index] = source.num_examples
  if any(count is None for count in counts):
    raise ValueError(
        f"The size of split {split!r} is unknown (no TFDS split metadata), so evaluation "
        "batches cannot be padded: prepare the dataset with TFDS first."
    )
  num_batches = max(1, math.ceil(max(counts) / host_batch))
  mean, std = tuple(data_config.mean), tuple(data_config.std)

  def preprocess(example):
    image = _resize_and_center_crop(sources.decode_rgb(example["image"]), size, crop_fraction)
    return {
        "image": augment.normalize(image, mean, std),
        "label": tf.cast(example["label"], tf.int32),
        "mask": tf.constant(True),
    }

  dataset = source.dataset.map(
      preprocess, num_parallel_calls=int(data_config.num_parallel_calls), deterministic=True
  )
  if source.from_files:
    dataset = dataset.ignore_errors(log_warning=True)
  padding = tf.data.Dataset.from_tensors({
      "image": tf.zeros([size, size, 3], tf.float32),
      "label": tf.constant(0, tf.int32),
      "mask": tf.constant(False),
  }).repeat()
  # take() after the padding also fills the places of files that failed to decode.
  dataset = dataset.concatenate(padding).take(num_batches * host_batch)
  dataset = dataset.batch(host_batch, drop_remainder=True)
  dataset = dataset.prefetch(int(data_config.prefetch_batches))
  return _apply_options(dataset, data_config)


def make_eval_iterators(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[Callable[[], Iterator[Batch]], Callable[[], Iterator[Batch]]]:
  """Returns (train_iter_fn, test_iter_fn) over `eval_train_split` and `eval_test_split`.

  Each function returns a fresh iterator for one pass over this host's part of the split, in
  a fixed order, with batches of `global_batch_size // process_count`:
    "image": float32 `[b, S, S, 3]` (S = eval_image_size, normalised), "label": int32 `[b]`,
    "mask": bool `[b]`, False on the padding that fills the last batches. Every host yields
    the same number of batches.
  """
  process_index, process_count = _process_layout(process_index, process_count)
  host_batch = host_batch_size(global_batch_size, process_count)

  def iterator_fn(split: str) -> Callable[[], Iterator[Batch]]:
    dataset = make_eval_dataset(
        data_config, split, host_batch=host_batch, process_index=process_index,
        process_count=process_count,
    )
    return dataset.as_numpy_iterator

  return iterator_fn(data_config.eval_train_split), iterator_fn(data_config.eval_test_split)
