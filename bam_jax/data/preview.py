r"""Writes a PNG grid of the multi-crop views of a few images, to check the augmentations by eye.

Each row is one image: its global crops, then its local crops (upscaled to the global size),
un-normalised back to [0, 255].

  python -m bam_jax.data.preview --config=configs/fashion_mnist.py --out=views.png
  python -m bam_jax.data.preview --out=views.png --num_images=4 \
      --config.image_folder=/path/to/images --config.train_split=''

`--config` takes an ml_collections config file whose `data` field is the data config, or a
data config itself; without it the Fashion-MNIST data config is used.
"""

from typing import Sequence

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np
from PIL import Image

from bam_jax.data import config as data_config_lib
from bam_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (the data config or a config with a `data` field).")
_OUT = flags.DEFINE_string("out", "views.png", "Output PNG path.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 4, "Images (grid rows) to show.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the views.")


def views_grid(batch: dict[str, np.ndarray], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Returns a `[rows * S, columns * S, 3]` uint8 grid, S the global crop size, one row per image."""
  global_crops = batch["global_crops"]
  size = global_crops.shape[2]
  rows = []
  for i in range(global_crops.shape[0]):
    tiles = list(global_crops[i])
    if "local_crops" in batch:
      tiles += list(batch["local_crops"][i])
    row = []
    for tile in tiles:
      pixels = np.clip((tile * np.asarray(std) + np.asarray(mean)) * 255.0, 0, 255).astype(np.uint8)
      row.append(np.asarray(Image.fromarray(pixels).resize((size, size), Image.NEAREST)))
    rows.append(np.concatenate(row, axis=1))
  return np.concatenate(rows, axis=0)


def main(argv: Sequence[str]) -> None:
  del argv
  config = _CONFIG.value
  if config is None:
    config = data_config_lib.fashion_mnist_config()
  elif "data" in config:
    config = config.data
  assert isinstance(config, ml_collections.ConfigDict)
  batch = next(
      pipeline.make_pretrain_iterator(
          config, global_batch_size=_NUM_IMAGES.value, seed=_SEED.value, process_index=0,
          process_count=1,
      )
  )
  Image.fromarray(views_grid(batch, config.mean, config.std)).save(_OUT.value)
  print(f"Wrote {_NUM_IMAGES.value} rows of views to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
