r"""Measures input-pipeline throughput (images/s, views/s), CPU cost and peak host memory.

  python benchmarks/input_pipeline.py --recipe=fashion_mnist --batches=40
  python benchmarks/input_pipeline.py --recipe=imagenet --batch_size=32 --batches=8

`imagenet` runs the full recipe (2 x 224 + 6 x 96) on an image folder of JPEG photos. Without
`--image_folder` it writes 70 JPEGs of 500 x 375 px (about ImageNet's mean size), cut from
scikit-image's bundled photographs, into a temporary folder. `--threads` sets tf.data's private
thread pool (1 for per-core figures).

CPU seconds per image are the process's user + system CPU time over the timed batches divided
by the images delivered. On a machine whose cores are shared with the training step this is
the figure that matters, because every CPU second of the pipeline is taken from training.
"""

import os
import resource
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from skimage import data as skimage_data

from bam_jax.data import config as config_lib
from bam_jax.data import pipeline

_RECIPE = flags.DEFINE_enum("recipe", "fashion_mnist", ["fashion_mnist", "imagenet"], "Augmentation recipe.")
_IMAGE_FOLDER = flags.DEFINE_string(
    "image_folder", "", "root/<class>/<image> folder for --recipe=imagenet; empty writes photos to a temporary folder."
)
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data_dir for Fashion-MNIST.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per batch.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Timed batches, after two warm-up batches.")
_THREADS = flags.DEFINE_integer("threads", 0, "tf.data private thread pool size; 0 uses all cores.")

_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "cat")
_PHOTO_SIZE = (500, 375)  # (width, height) in pixels
_CROPS_PER_PHOTO = 10


def write_photo_folder(root: str) -> str:
  """Writes `root/photos/<name>_<i>.jpg`: 70 JPEGs of 500 x 375 px cut from real photographs."""
  os.makedirs(os.path.join(root, "photos"), exist_ok=True)
  rng = np.random.default_rng(0)
  for name in _PHOTOS:
    photo = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
    for i in range(_CROPS_PER_PHOTO):
      # A random sub-window, resized, so that the JPEGs differ from one another.
      width, height = photo.size
      scale = rng.uniform(0.6, 1.0)
      box_w, box_h = int(width * scale), int(height * scale)
      left = int(rng.integers(0, width - box_w + 1))
      top = int(rng.integers(0, height - box_h + 1))
      window = photo.crop((left, top, left + box_w, top + box_h)).resize(_PHOTO_SIZE, Image.BICUBIC)
      window.save(os.path.join(root, "photos", f"{name}_{i}.jpg"), quality=90)
  return root


def main(argv: Sequence[str]) -> None:
  del argv
  if _RECIPE.value == "fashion_mnist":
    config = config_lib.fashion_mnist_config()
    config.data_dir = _DATA_DIR.value
  else:
    config = config_lib.default_config()
    config.image_folder = _IMAGE_FOLDER.value or write_photo_folder(tempfile.mkdtemp())
    config.train_split = ""
  config.private_threadpool_size = _THREADS.value
  if _THREADS.value:
    config.num_parallel_calls = _THREADS.value
  views_per_image = config.num_global_crops + config.num_local_crops

  iterator = pipeline.make_pretrain_iterator(
      config, global_batch_size=_BATCH.value, seed=0, process_index=0, process_count=1
  )
  for _ in range(2):
    next(iterator)
  start_cpu = os.times()
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(iterator)
  seconds = time.perf_counter() - start
  end_cpu = os.times()
  cpu_seconds = (end_cpu.user - start_cpu.user) + (end_cpu.system - start_cpu.system)
  images = _BATCH.value * _BATCHES.value
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(
      f"recipe={_RECIPE.value} threads={_THREADS.value or 'all'} images={images} "
      f"images/s={images / seconds:.1f} views/s={images * views_per_image / seconds:.1f} "
      f"cpu_ms/image={1000 * cpu_seconds / images:.3f} cpu_cores_busy={cpu_seconds / seconds:.2f} "
      f"peak_rss_mib={peak_mib:.0f}"
  )


if __name__ == "__main__":
  app.run(main)
