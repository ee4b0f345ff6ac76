"""Sources of encoded images: TFDS datasets by name and image folders, split per host."""

import concurrent.futures
import dataclasses
import os

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from bam_jax.data import fashion_mnist

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Leading bytes of the image formats that `tf.io.decode_image` reads from image folders.
_MAGIC_NUMBERS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
_MAX_LOGGED_PATHS = 10


@dataclasses.dataclass(frozen=True)
class Source:
  """This host's part of one split.

  Attributes:
    dataset: elements {"image": scalar tf.string (encoded image), "label": int64}; label -1
      where the split has none.
    num_examples: examples in `dataset` (before any undecodable files are dropped); None when
      TFDS has no split metadata.
    channels: channels of the stored images: 1 for grayscale sources, else 3.
    from_files: the source reads files that may fail to decode (image folders).
  """

  dataset: tf.data.Dataset
  num_examples: int | None
  channels: int
  from_files: bool


def host_split(split: str, process_index: int, process_count: int) -> str:
  """Returns the part of `split` (a TFDS split string) that host `process_index` reads."""
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def _tfds_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  data_dir = os.path.expanduser(config.data_dir)
  if config.dataset == "fashion_mnist":
    return fashion_mnist.prepare_fashion_mnist(data_dir, config.fashion_mnist_dir)
  try:
    builder = tfds.builder(config.dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ValueError(
        f"data.dataset={config.dataset!r} is not a TFDS dataset name: {error}"
    ) from error
  if not builder.is_prepared():
    raise ValueError(
        f"TFDS dataset {config.dataset!r} is not prepared in {data_dir}: prepare it there first "
        f"(tfds build {config.dataset} --data_dir={data_dir}; imagenet2012 needs the manually "
        "downloaded archives in <data_dir>/downloads/manual), or set data.data_dir to the "
        "directory that holds it. Nothing is downloaded while training."
    )
  return builder


def tfds_source(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    process_index: int,
    process_count: int,
    shuffle_files: bool,
    seed: int,
) -> Source:
  """Opens this host's part of TFDS split `split` of `config.dataset`, images left encoded."""
  builder = _tfds_builder(config)
  features = builder.info.features
  if "image" not in features:
    raise ValueError(
        f"TFDS dataset {config.dataset!r} has no 'image' feature (features: "
        f"{sorted(features.keys())}); choose an image dataset."
    )
  split_names = builder.info.splits.keys()
  # NOTE: split metadata is empty under tfds.testing.mock_data; sizes are then unknown (None).
  if split_names and split.split("[")[0] not in split_names:
    raise ValueError(
        f"Split {split!r} not found in TFDS dataset {config.dataset!r}; available splits: "
        f"{sorted(split_names)}."
    )
  per_host = host_split(split, process_index, process_count)
  num_examples = builder.info.splits[per_host].num_examples if split_names else None
  image_shape = features["image"].shape
  channels = 1 if image_shape and image_shape[-1] == 1 else 3

  read_config = tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=False)
  dataset = builder.as_dataset(
      split=per_host,
      shuffle_files=shuffle_files,
      read_config=read_config,
      decoders={"image": tfds.decode.SkipDecoding()},
  )
  has_label = "label" in features

  def select(example):
    label = tf.cast(example["label"], tf.int64) if has_label else tf.constant(-1, tf.int64)
    return {"image": example["image"], "label": label}

  dataset = dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)
  return Source(dataset=dataset, num_examples=num_examples, channels=channels, from_files=False)


def _has_image_magic(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError:
    return False
  return any(head.startswith(magic) for magic in _MAGIC_NUMBERS)


def list_image_folder(root: str) -> tuple[list[str], list[int], list[str]]:
  """Lists `root/<class>/<image>` files in sorted order and drops those that are not images.

  A file is dropped when it cannot be read or does not start with a JPEG or PNG signature; the
  count and the first paths go to one warning. Files that pass this check but fail to decode
  are skipped later by the pipeline.

  Returns:
    (paths, labels, class_names), labels indexing the sorted class folder names.
  """
  if not os.path.isdir(root):
    raise ValueError(f"Image folder {root!r} not found: set data.image_folder (and the split).")
  class_names = sorted(e.name for e in os.scandir(root) if e.is_dir())
  if not class_names:
    raise ValueError(f"Image folder {root!r} has no class subfolders: expected root/<class>/<image>.")
  candidates, candidate_labels = [], []
  for label, name in enumerate(class_names):
    for dirpath, _, filenames in sorted(os.walk(os.path.join(root, name))):
      for filename in sorted(filenames):
        if filename.lower().endswith(IMAGE_EXTENSIONS):
          candidates.append(os.path.join(dirpath, filename))
          candidate_labels.append(label)

  # Reading 8 bytes per file is I/O bound, so threads overlap the reads.
  with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
    valid = list(pool.map(_has_image_magic, candidates))
  paths = [p for p, ok in zip(candidates, valid) if ok]
  labels = [l for l, ok in zip(candidate_labels, valid) if ok]
  rejected = [p for p, ok in zip(candidates, valid) if not ok]
  if rejected:
    logging.warning(
        "Skipped %d of %d files in %s that are unreadable or not JPEG/PNG, e.g. %s",
        len(rejected), len(candidates), root, rejected[:_MAX_LOGGED_PATHS],
    )
  if not paths:
    raise ValueError(f"Image folder {root!r} contains no readable JPEG or PNG files.")
  return paths, labels, class_names


def image_folder_source(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    process_index: int,
    process_count: int,
    shuffle_files: bool,
    seed: int,
) -> Source:
  """Opens this host's contiguous share of the files in `image_folder/<split>`."""
  root = os.path.join(os.path.expanduser(config.image_folder), split)
  paths, labels, _ = list_image_folder(root)
  # The same contiguous partition as tfds.even_splits: host shares differ by at most one file.
  shares = np.array_split(np.arange(len(paths)), process_count)
  index = shares[process_index]
  host_paths = [paths[i] for i in index]
  host_labels = np.asarray([labels[i] for i in index], np.int64)

  dataset = tf.data.Dataset.from_tensor_slices({"path": host_paths, "label": host_labels})
  if shuffle_files:
    # The buffer contains every path of this host (strings, not images), so this is a full shuffle.
    dataset = dataset.shuffle(len(host_paths), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.map(
      lambda e: {"image": tf.io.read_file(e["path"]), "label": e["label"]},
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  return Source(dataset=dataset, num_examples=len(host_paths), channels=3, from_files=True)


def open_source(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    process_index: int,
    process_count: int,
    shuffle_files: bool,
    seed: int,
) -> Source:
  """Opens this host's part of `split` from the image folder when set, else from TFDS."""
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} is invalid for process_count={process_count}."
    )
  open_fn = image_folder_source if config.image_folder else tfds_source
  return open_fn(
      config, split, process_index=process_index, process_count=process_count,
      shuffle_files=shuffle_files, seed=seed,
  )


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes a JPEG or PNG to `[height, width, 3]` uint8 (gray repeated, alpha dropped)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
  image.set_shape([None, None, 3])
  return image
