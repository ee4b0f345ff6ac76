"""End-to-end pre-training on every kind of source: an image folder and named TFDS datasets.

Each test runs the real trainer (`train_and_evaluate`) for 2 steps of a tiny ViT on 8 CPU
devices, then checks the logged losses, the checkpoint and the k-NN results. The named TFDS
datasets come from `tfds.testing.mock_data` (random images and labels). Their split sizes come
from a `dataset_info.json` written by the test, because evaluation pads its last batch to a
size that it reads from the split metadata.
"""

import importlib.util
import json
import math
import pathlib

import jax
from jax.experimental.compilation_cache import compilation_cache
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bam_jax.train import trainer
from conftest_data import NUM_VALID_IMAGES, write_image_folder

REPO = pathlib.Path(__file__).resolve().parents[1]
TOTAL_STEPS = 2
GLOBAL_BATCH_SIZE = 16
# Mock examples per split: two host batches, so that k-NN gets full batches on both splits.
NUM_MOCK_EXAMPLES = 32


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
  """Compiles the train step once for the module: every run has the same model and shapes."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  compilation_cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _load_config(name: str, variant: str | None = None) -> ml_collections.ConfigDict:
  path = REPO / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"{name}_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _shrink(config: ml_collections.ConfigDict, crop_size: int = 32) -> ml_collections.ConfigDict:
  """Sets a 2-step run of a ViT-mu/16 on one 32 px global crop pair and two 16 px local crops."""
  config.global_batch_size = GLOBAL_BATCH_SIZE
  config.steps_per_epoch = 1
  config.total_steps = TOTAL_STEPS
  config.optim.warmup_epochs = 0.0
  # The schedules are compiled into the train step, so equal values let every run reuse it.
  config.optim.lr_per_256 = 3e-4
  config.optim.min_lr = 1e-6
  config.teacher.momentum = 0.995
  config.data.num_local_crops = 2
  config.data.global_crop_size = crop_size
  config.data.local_crop_size = crop_size // 2
  config.data.eval_image_size = crop_size
  config.data.shuffle_buffer_size = 64
  config.model.variant = "mu"
  config.model.patch_size = 16
  config.model.dtype = "float32"
  config.model.head_hidden_dim = 64
  config.model.head_output_dim = 64
  config.model.head_layers = 2
  config.objective.top_k = 8
  config.log_every_steps = 1
  config.checkpoint_every_steps = TOTAL_STEPS
  config.knn_every_steps = 0
  # The image folder has 10 train images, fewer than the usual 20 neighbours.
  config.knn.k = 5
  config.knn.batch_size = GLOBAL_BATCH_SIZE
  config.knn.max_train_batches = -1
  config.knn.max_test_batches = -1
  config.knn.evaluate_baselines = False
  return config


def _logged_losses(workdir: pathlib.Path) -> dict[int, float]:
  """Reads the "loss" scalars that the trainer wrote to its TensorBoard event files."""
  losses = {}
  for path in sorted(workdir.glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag == "loss":
          losses[event.step] = float(tf.make_ndarray(value.tensor))
  return losses


def _check_run(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, num_test: int) -> None:
  results = trainer.train_and_evaluate(config, workdir)

  losses = _logged_losses(workdir)
  assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
  # A cross-entropy over the G * B keys of the global batch starts near log(G * B). A loss far
  # outside (0, 2 * log(G * B)), or one that grows fast, means the batches or the step are wrong.
  num_keys = config.data.num_global_crops * GLOBAL_BATCH_SIZE
  for step, loss in losses.items():
    assert math.isfinite(loss), (step, loss)
    assert 0.0 < loss < 2.0 * math.log(num_keys), (step, loss)
  assert losses[TOTAL_STEPS] < 1.5 * losses[1]
  assert results["final_loss"] == pytest.approx(losses[TOTAL_STEPS])

  assert results["step"] == TOTAL_STEPS
  checkpoints = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert checkpoints == [str(TOTAL_STEPS)]

  assert results["num_test"] == num_test
  assert 0.0 <= results["knn_top1"] <= 100.0
  saved = json.loads((workdir / trainer.RESULTS_FILE).read_text())
  assert saved["knn_top1"] == pytest.approx(results["knn_top1"])


def test_image_folder_trains(tmp_path):
  root = tmp_path / "photos"
  # Real photographs plus broken files, which the pipeline must skip without stopping.
  write_image_folder(str(root / "train"))
  write_image_folder(str(root / "val"))
  config = _shrink(_load_config("image_folder", "runlocal"))
  config.data.image_folder = str(root)
  config.data.num_classes = 2

  _check_run(config, tmp_path / "run", num_test=NUM_VALID_IMAGES)


def _write_split_metadata(name: str, data_dir: pathlib.Path, splits: tuple[str, ...]) -> None:
  """Writes `dataset_info.json` of TFDS dataset `name` with NUM_MOCK_EXAMPLES in each split."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  split_infos = [
      tfds.core.SplitInfo(
          name=split, shard_lengths=[NUM_MOCK_EXAMPLES], num_bytes=0,
          filename_template=tfds.core.ShardedFileTemplate(
              data_dir=builder.data_path, dataset_name=name, split=split,
              filetype_suffix="tfrecord"),
      )
      for split in splits
  ]
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.data_path.mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


@pytest.mark.parametrize("name, crop_size, splits", [
    ("cifar10", 32, ("train", "test")),
    ("stl10", 32, ("train", "test", "unlabelled")),
    ("imagenet2012", 32, ("train", "validation")),
], ids=["cifar10", "stl10_unlabelled", "imagenet2012"])
def test_named_tfds_dataset_trains(name, crop_size, splits, tmp_path):
  if name == "imagenet2012":
    config = _load_config("imagenet", "vit_small")
  else:
    config = _load_config(name, "runlocal")
  config = _shrink(config, crop_size)
  assert config.data.dataset == name
  config.data.data_dir = str(tmp_path / "tensorflow_datasets")
  _write_split_metadata(name, tmp_path / "tensorflow_datasets", splits)

  with tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES,
                              policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=config.data.data_dir):
    _check_run(config, tmp_path / "run", num_test=NUM_MOCK_EXAMPLES)


def test_mock_split_sizes_reach_pipeline(tmp_path):
  # Without the written metadata every split size would be None and k-NN could not pad.
  data_dir = tmp_path / "tensorflow_datasets"
  _write_split_metadata("cifar10", data_dir, ("train", "test"))
  with tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES,
                              policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(data_dir)):
    builder = tfds.builder("cifar10", data_dir=str(data_dir))
    assert builder.is_prepared()
    assert builder.info.splits["test"].num_examples == NUM_MOCK_EXAMPLES
    labels = [int(e["label"]) for e in builder.as_dataset(split="test").as_numpy_iterator()]
  assert len(labels) == NUM_MOCK_EXAMPLES
  assert set(np.unique(labels)) <= set(range(10))
