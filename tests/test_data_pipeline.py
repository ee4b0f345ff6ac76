"""Tests of the host-local pipelines on real images: image folders, TFDS mock data, Fashion-MNIST."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bam_jax.data import config as config_lib
from bam_jax.data import fashion_mnist
from bam_jax.data import pipeline
from bam_jax.data import sources
from conftest_data import NUM_VALID_IMAGES


def _folder_config(root: str):
  config = config_lib.default_config()
  config.image_folder = root
  config.train_split = ""
  config.eval_train_split = ""
  config.eval_test_split = ""
  config.global_crop_size = 32
  config.local_crop_size = 16
  config.num_local_crops = 2
  config.eval_image_size = 32
  return config


def test_image_folder_skips_unreadable_files(image_folder):
  paths, labels, classes = sources.list_image_folder(image_folder)
  assert classes == ["animals", "objects"]
  # The empty and the text file are dropped here; the truncated JPEG later, when decoding.
  assert len(paths) == NUM_VALID_IMAGES + 1
  assert not any(p.endswith(("empty.jpg", "notes.png")) for p in paths)
  assert sorted(set(labels)) == [0, 1]


def test_pretrain_batches_from_image_folder(image_folder):
  config = _folder_config(image_folder)
  iterator = pipeline.make_pretrain_iterator(config, global_batch_size=8, seed=0, process_index=0, process_count=1)
  for _ in range(3):
    batch = next(iterator)
    assert batch["global_crops"].shape == (8, 2, 32, 32, 3)
    assert batch["local_crops"].shape == (8, 2, 16, 16, 3)
    assert batch["global_crops"].dtype == np.float32
    assert np.isfinite(batch["global_crops"]).all()
    assert -2.2 < batch["global_crops"].min() < 0.0 < batch["global_crops"].max() < 2.7


def test_pretrain_deterministic_per_seed(image_folder):
  config = _folder_config(image_folder)

  def first_batch(seed):
    return next(pipeline.make_pretrain_iterator(config, global_batch_size=4, seed=seed, process_index=0, process_count=1))

  np.testing.assert_array_equal(first_batch(1)["global_crops"], first_batch(1)["global_crops"])
  assert not np.allclose(first_batch(1)["global_crops"], first_batch(2)["global_crops"])


def test_no_local_crops_omits_key(image_folder):
  config = _folder_config(image_folder)
  config.num_local_crops = 0
  batch = next(pipeline.make_pretrain_iterator(config, global_batch_size=2, seed=0, process_index=0, process_count=1))
  assert "local_crops" not in batch


def test_hosts_read_disjoint_files(image_folder):
  config = _folder_config(image_folder)
  shares = []
  for process_index in range(2):
    source = sources.open_source(config, "", process_index=process_index, process_count=2, shuffle_files=False, seed=0)
    shares.append({e["image"] for e in source.dataset.as_numpy_iterator()})
  assert not shares[0] & shares[1]
  assert len(shares[0]) + len(shares[1]) == NUM_VALID_IMAGES + 1


def test_eval_pads_and_masks(image_folder):
  config = _folder_config(image_folder)
  train_fn, test_fn = pipeline.make_eval_iterators(config, global_batch_size=4, process_index=0, process_count=1)
  batches = list(test_fn())
  # 11 files pass the header check -> 3 batches of 4; the truncated JPEG becomes padding.
  assert len(batches) == 3
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == NUM_VALID_IMAGES
  for b in batches:
    assert b["image"].shape == (4, 32, 32, 3)
    assert b["label"].dtype == np.int32
    assert (b["image"][~b["mask"]] == 0).all()
  assert len(list(train_fn())) == 3


def test_batch_must_divide_process_count(image_folder):
  with pytest.raises(ValueError, match="global_batch_size=10"):
    pipeline.make_pretrain_iterator(_folder_config(image_folder), global_batch_size=10, seed=0, process_index=0, process_count=4)


@pytest.mark.parametrize("dataset, split", [("cifar10", "train"), ("stl10", "unlabelled")])
def test_tfds_mock_datasets(dataset, split, monkeypatch, tmp_path):
  config = config_lib.default_config()
  config.dataset = dataset
  config.data_dir = str(tmp_path)
  config.train_split = split
  config.global_crop_size = 32
  config.local_crop_size = 16
  config.shuffle_buffer_size = 8
  with tfds.testing.mock_data(num_examples=8):
    # mock_data serves examples but leaves the builder marked as not prepared.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    batch = next(pipeline.make_pretrain_iterator(config, global_batch_size=4, seed=0, process_index=0, process_count=1))
  assert batch["global_crops"].shape == (4, 2, 32, 32, 3)
  assert batch["local_crops"].shape == (4, 6, 16, 16, 3)


def _mock_imagenet_config(tmp_path):
  config = config_lib.default_config()
  config.data_dir = str(tmp_path)
  config.shuffle_buffer_size = 8
  return config


def test_imagenet2012_mock_full_recipe(monkeypatch, tmp_path):
  config = _mock_imagenet_config(tmp_path)
  assert config.dataset == "imagenet2012"
  with tfds.testing.mock_data(num_examples=8):
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    source = sources.open_source(config, "train", process_index=1, process_count=2, shuffle_files=False, seed=0)
    assert source.channels == 3
    assert not source.from_files
    labels = [int(e["label"]) for e in source.dataset.as_numpy_iterator()]
    assert labels and all(0 <= label < 1000 for label in labels)

    def first_batch():
      iterator = pipeline.make_pretrain_iterator(config, global_batch_size=8, seed=3, process_index=1, process_count=2)
      return next(iterator)

    batch, again = first_batch(), first_batch()
  assert batch["global_crops"].shape == (4, 2, 224, 224, 3)
  assert batch["local_crops"].shape == (4, 6, 96, 96, 3)
  for key in ("global_crops", "local_crops"):
    assert np.isfinite(batch[key]).all()
    assert -2.2 < batch[key].min() < 0.0 < batch[key].max() < 2.7
    np.testing.assert_array_equal(batch[key], again[key])


def test_imagenet2012_per_host_split_strings():
  assert sources.host_split("train", 1, 4) == tfds.even_splits("train", n=4, drop_remainder=False)[1]
  assert sources.host_split("train", 1, 4) != sources.host_split("train", 2, 4)


def test_imagenet2012_mock_eval_without_sizes_raises(monkeypatch, tmp_path):
  # mock_data serves no split metadata, so evaluation cannot size its padding.
  config = _mock_imagenet_config(tmp_path)
  with tfds.testing.mock_data(num_examples=8):
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with pytest.raises(ValueError, match="split 'train' is unknown"):
      pipeline.make_eval_iterators(config, global_batch_size=4, process_index=0, process_count=1)


def test_unprepared_tfds_dataset_raises(tmp_path):
  config = config_lib.default_config()
  config.dataset = "cifar10"
  config.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match="not prepared"):
    pipeline.make_pretrain_iterator(config, global_batch_size=2, seed=0, process_index=0, process_count=1)


def test_missing_fashion_mnist_archives_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    fashion_mnist.prepare_fashion_mnist(str(tmp_path / "tfds"), str(tmp_path / "missing"))


def test_fashion_mnist_pretrain_and_eval(fashion_mnist_data_dir):
  config = config_lib.fashion_mnist_config()
  config.data_dir = fashion_mnist_data_dir
  batch = next(pipeline.make_pretrain_iterator(config, global_batch_size=16, seed=0, process_index=1, process_count=2))
  assert batch["global_crops"].shape == (8, 2, 28, 28, 3)
  assert batch["local_crops"].shape == (8, 4, 16, 16, 3)
  # Grayscale source converted to 3 equal channels (colour jitter and grayscale are skipped).
  pixels = batch["global_crops"] * np.asarray(config.std) + np.asarray(config.mean)
  np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-5)

  counts = []
  for process_index in range(2):
    _, test_fn = pipeline.make_eval_iterators(config, global_batch_size=2048, process_index=process_index, process_count=2)
    masks = [b["mask"] for b in test_fn()]
    counts.append(int(np.concatenate(masks).sum()))
    assert len(masks) == 5  # ceil(5000 / 1024)
  assert counts == [5000, 5000]
