"""Fixtures shared by the data tests: a real-photo image folder with broken files."""

import io
import os

import numpy as np
from PIL import Image
import pytest
from skimage import data as skimage_data

# Bundled photographs of scikit-image (no download): RGB, grayscale and RGBA.
_PHOTOS = {
    "animals": ["astronaut", "chelsea", "cat", "coffee"],
    "objects": ["rocket", "camera", "coins", "logo"],
}
# Valid images in both class folders: 8 photos plus a CMYK JPEG and an 8x8 PNG in "objects".
NUM_VALID_IMAGES = 10
# Broken files: an empty file, a text file and a truncated JPEG.
NUM_BROKEN_FILES = 3


def _save(array: np.ndarray, path: str, **kwargs) -> None:
  Image.fromarray(array).save(path, **kwargs)


def write_image_folder(root: str) -> str:
  """Writes root/<class>/<image> with JPEG, PNG, CMYK, RGBA, tiny and broken files."""
  for class_name, photos in _PHOTOS.items():
    os.makedirs(os.path.join(root, class_name), exist_ok=True)
    for name in photos:
      pixels = getattr(skimage_data, name)()
      # logo is RGBA, so it stays a PNG; the others alternate JPEG and PNG.
      extension = "png" if pixels.ndim == 3 and pixels.shape[-1] == 4 or name in ("camera", "cat") else "jpg"
      _save(pixels, os.path.join(root, class_name, f"{name}.{extension}"))

  objects = os.path.join(root, "objects")
  Image.fromarray(skimage_data.coffee()).convert("CMYK").save(os.path.join(objects, "coffee_cmyk.jpg"))
  _save(skimage_data.astronaut()[::64, ::64], os.path.join(objects, "tiny.png"))

  broken = os.path.join(root, "animals")
  open(os.path.join(broken, "empty.jpg"), "wb").close()
  with open(os.path.join(broken, "notes.png"), "w") as f:
    f.write("not an image")
  encoded = io.BytesIO()
  Image.fromarray(skimage_data.chelsea()).save(encoded, format="JPEG")
  with open(os.path.join(broken, "truncated.jpg"), "wb") as f:
    f.write(encoded.getvalue()[: len(encoded.getvalue()) // 3])
  return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> str:
  return write_image_folder(str(tmp_path_factory.mktemp("image_folder")))


@pytest.fixture(scope="session")
def fashion_mnist_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir with fashion_mnist prepared from the Debian package's idx files."""
  from bam_jax.data import fashion_mnist

  if not os.path.isfile(os.path.join(fashion_mnist.DEFAULT_ARCHIVE_DIR, "train-images-idx3-ubyte.gz")):
    pytest.skip(fashion_mnist.missing_archives_message(fashion_mnist.DEFAULT_ARCHIVE_DIR))
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  fashion_mnist.prepare_fashion_mnist(data_dir)
  return data_dir
