r"""Measures input-pipeline throughput (views/s) and peak host memory.

  python benchmarks/input_pipeline.py --recipe=fashion_mnist --batches=40
  python benchmarks/input_pipeline.py --recipe=imagenet --image_folder=/path/to/jpegs --batches=10

`imagenet` runs the full recipe (2 x 224 + 6 x 96) on an image folder of JPEG photos (for example
ImageNet-size photos); `--threads` sets tf.data's private thread pool (1 for per-core figures).
"""

import resource
import time
from typing import Sequence

from absl import app
from absl import flags

from bam_jax.data import config as config_lib
from bam_jax.data import pipeline

_RECIPE = flags.DEFINE_enum("recipe", "fashion_mnist", ["fashion_mnist", "imagenet"], "Augmentation recipe.")
_IMAGE_FOLDER = flags.DEFINE_string("image_folder", "", "root/<class>/<image> folder for --recipe=imagenet.")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data_dir for Fashion-MNIST.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per batch.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Timed batches, after one warm-up batch.")
_THREADS = flags.DEFINE_integer("threads", 0, "tf.data private thread pool size; 0 uses all cores.")


def main(argv: Sequence[str]) -> None:
  del argv
  if _RECIPE.value == "fashion_mnist":
    config = config_lib.fashion_mnist_config()
    config.data_dir = _DATA_DIR.value
  else:
    config = config_lib.default_config()
    config.image_folder = _IMAGE_FOLDER.value
    config.train_split = ""
  config.private_threadpool_size = _THREADS.value
  if _THREADS.value:
    config.num_parallel_calls = _THREADS.value
  views_per_image = config.num_global_crops + config.num_local_crops

  iterator = pipeline.make_pretrain_iterator(
      config, global_batch_size=_BATCH.value, seed=0, process_index=0, process_count=1
  )
  next(iterator)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(iterator)
  seconds = time.perf_counter() - start
  images = _BATCH.value * _BATCHES.value
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(
      f"recipe={_RECIPE.value} threads={_THREADS.value or 'all'} images/s={images / seconds:.1f} "
      f"views/s={images * views_per_image / seconds:.1f} peak_rss_mib={peak_mib:.0f}"
  )


if __name__ == "__main__":
  app.run(main)
