"""Offline preparation of the TFDS `fashion_mnist` dataset from local idx archives.

TFDS's `fashion_mnist` builder downloads four gzip'd idx files. The Debian package
`dataset-fashion-mnist` ships the same idx data in `/usr/share/datasets/fashion-mnist/`, but
recompressed, so the gzip files do not match the checksums that TFDS registers for the
download URLs and the download manager rejects them. `prepare_fashion_mnist` therefore runs
TFDS's own `FashionMNIST` builder (its features, its example generator, its TFRecord writer)
with one change: the split generators extract the local archives instead of downloading. The
result is an ordinary `fashion_mnist/3.0.1` directory under `data_dir`, read by
`tfds.builder("fashion_mnist", data_dir=...)` exactly like a downloaded copy.
"""

import os

from absl import logging
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_ARCHIVE_DIR = "/usr/share/datasets/fashion-mnist"

# Keys of `MNIST._generate_examples`' gen_kwargs mapped to the archive names of the idx files.
_ARCHIVES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


class _LocalArchiveFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
  """TFDS's FashionMNIST builder reading its idx archives from a local directory."""

  # The same name and version as the registered builder, so the prepared files are the
  # registered dataset's files.
  name = "fashion_mnist"
  # Nothing is downloaded, so no URL checksums apply. Setting this also stops TFDS from
  # locating a checksums file next to this module's code.
  url_infos = None

  def __init__(self, *, archive_dir: str, **kwargs):
    self._archive_dir = archive_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    local_archives = {
        key: os.path.join(self._archive_dir, filename) for key, filename in _ARCHIVES.items()
    }
    # TFDS's extractor gunzips each archive into the download directory's `extracted/`.
    idx_files = dl_manager.extract(local_archives)
    return [
        tfds.core.SplitGenerator(
            name=tfds.Split.TRAIN,
            gen_kwargs=dict(
                num_examples=tfds_mnist._TRAIN_EXAMPLES,  # pylint: disable=protected-access
                data_path=idx_files["train_data"],
                label_path=idx_files["train_labels"],
            ),
        ),
        tfds.core.SplitGenerator(
            name=tfds.Split.TEST,
            gen_kwargs=dict(
                num_examples=tfds_mnist._TEST_EXAMPLES,  # pylint: disable=protected-access
                data_path=idx_files["test_data"],
                label_path=idx_files["test_labels"],
            ),
        ),
    ]


def missing_archives_message(archive_dir: str) -> str:
  """Returns the one-line instruction printed when the idx archives are not found."""
  return (
      f"Fashion-MNIST idx archives not found in {archive_dir}: install them with "
      f"'sudo apt-get install {DEBIAN_PACKAGE}', or set config.data.fashion_mnist_dir to the "
      f"directory that holds {', '.join(sorted(_ARCHIVES.values()))}."
  )


def prepare_fashion_mnist(data_dir: str, archive_dir: str = DEFAULT_ARCHIVE_DIR) -> tfds.core.DatasetBuilder:
  """Prepares TFDS `fashion_mnist` in `data_dir` from local archives unless already prepared.

  Args:
    data_dir: TFDS data directory (`~` is expanded); the dataset lands in
      `data_dir/fashion_mnist/3.0.1`.
    archive_dir: directory holding the four gzip'd idx files of Fashion-MNIST.

  Returns:
    The registered `fashion_mnist` builder for `data_dir`, ready for `as_dataset`.

  Raises:
    FileNotFoundError: an idx archive is missing and the dataset is not prepared yet. The
      message is one line stating how to install the archives or which config field to set.
  """
  data_dir = os.path.expanduser(data_dir)
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  if builder.is_prepared():
    return builder

  archive_dir = os.path.expanduser(archive_dir)
  if not all(os.path.isfile(os.path.join(archive_dir, name)) for name in _ARCHIVES.values()):
    raise FileNotFoundError(missing_archives_message(archive_dir))

  logging.info("Preparing TFDS fashion_mnist in %s from the archives in %s.", data_dir, archive_dir)
  local_builder = _LocalArchiveFashionMNIST(archive_dir=archive_dir, data_dir=data_dir)
  local_builder.download_and_prepare(
      download_dir=os.path.join(data_dir, "downloads"),
      download_config=tfds.download.DownloadConfig(
          download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
      ),
  )
  # A fresh builder reads the dataset_info.json just written.
  return tfds.builder("fashion_mnist", data_dir=data_dir)
