"""Data and augmentation config: the published multi-crop recipe and a Fashion-MNIST variant."""

import ml_collections
from ml_collections import config_dict

# ImageNet channel statistics for images scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_config() -> ml_collections.ConfigDict:
  """Returns the data config of the published ImageNet recipe (2 x 224 px + 6 x 96 px crops).

  Fields:
    dataset: TFDS name, e.g. "imagenet2012", "cifar10", "cifar100", "stl10", "fashion_mnist",
      or any TFDS dataset with an `image` feature. Ignored when `image_folder` is set.
    data_dir: TFDS data directory (`~` expanded). imagenet2012 must already be prepared there
      from the manually downloaded archives, as TFDS documents; `fashion_mnist` is prepared
      there from `fashion_mnist_dir` on first use.
    fashion_mnist_dir: directory with the four gzip'd Fashion-MNIST idx files (the Debian
      package dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist).
    image_folder: when non-empty, read images from `image_folder/<split>/<class>/<image>`
      (JPEG or PNG) instead of TFDS; an empty split name means `image_folder/<class>/<image>`.
    train_split: split for pre-training, e.g. "train", or "unlabelled" for stl10.
    eval_train_split / eval_test_split: splits for k-NN evaluation (imagenet2012: "train" and
      "validation").
    num_classes: label count of the evaluation splits, used by k-NN.
    color_augmentation: None picks it from the source (off for one-channel sources such as
      Fashion-MNIST); False skips saturation, hue and random grayscale but keeps brightness and
      contrast; True applies the full colour jitter.
    num_global_crops / num_local_crops: views per image; 0 local crops omits "local_crops".
    global_crop_size / local_crop_size: output side in pixels.
    global_crop_scale / local_crop_scale: (min, max) fraction of the image area per crop.
    crop_aspect_ratio: (min, max) width / height of the crop before resizing.
    resize_method: a `tf.image.ResizeMethod` value; "bicubic" as in the recipe.
    flip_probability: horizontal flip probability for every crop.
    color_jitter_probability, brightness, contrast, saturation, hue: colour jitter applied with
      that probability, its four operations in random order; factors are drawn uniformly from
      [1 - x, 1 + x] (brightness, contrast, saturation) and [-hue, hue] (hue shift, in turns).
    grayscale_probability: probability of converting a crop to grayscale (kept as 3 channels).
    blur_sigma: (min, max) Gaussian blur sigma in output pixels.
    blur_probability_global: per global crop, in order (length num_global_crops).
    blur_probability_local: for every local crop.
    solarize_probability_global: per global crop, in order (length num_global_crops).
    solarize_threshold: pixels at or above it (images in [0, 1]) are inverted.
    mean / std: per-channel normalisation applied last.
    eval_image_size: side of the evaluation images in pixels.
    eval_crop_fraction: evaluation images are resized so that their shorter side is
      eval_image_size / eval_crop_fraction, then centre-cropped (0.875 gives 256 -> 224).
    shuffle_buffer_size: examples held by the shuffle buffer. The buffer holds encoded
      images (about 110 KB each for ImageNet JPEGs, so 10_000 is about 1.1 GB per host).
    file_shuffle: shuffle the order of the source's files each epoch.
    prefetch_batches: batches prepared ahead of the consumer.
    num_parallel_calls: parallel calls for decoding and augmentation; -1 lets tf.data tune it.
    private_threadpool_size: 0 uses tf.data's shared pool; otherwise threads for this pipeline.
  """
  config = ml_collections.ConfigDict()

  config.dataset = "imagenet2012"
  config.data_dir = "~/tensorflow_datasets"
  config.fashion_mnist_dir = "/usr/share/datasets/fashion-mnist"
  config.image_folder = ""
  config.train_split = "train"
  config.eval_train_split = "train"
  config.eval_test_split = "validation"
  config.num_classes = 1000
  config.color_augmentation = config_dict.placeholder(bool)

  config.num_global_crops = 2
  config.num_local_crops = 6
  config.global_crop_size = 224
  config.local_crop_size = 96
  config.global_crop_scale = (0.25, 1.0)
  config.local_crop_scale = (0.05, 0.25)
  config.crop_aspect_ratio = (3.0 / 4.0, 4.0 / 3.0)
  config.resize_method = "bicubic"

  config.flip_probability = 0.5
  config.color_jitter_probability = 0.8
  config.brightness = 0.4
  config.contrast = 0.4
  config.saturation = 0.4
  config.hue = 0.1
  config.grayscale_probability = 0.2
  config.blur_sigma = (0.1, 2.0)
  config.blur_probability_global = (1.0, 0.1)
  config.blur_probability_local = 0.5
  config.solarize_probability_global = (0.0, 0.2)
  config.solarize_threshold = 0.5
  config.mean = IMAGENET_MEAN
  config.std = IMAGENET_STD

  config.eval_image_size = 224
  config.eval_crop_fraction = 0.875

  config.shuffle_buffer_size = 10_000
  config.file_shuffle = True
  config.prefetch_batches = 2
  config.num_parallel_calls = -1
  config.private_threadpool_size = 0
  return config


def fashion_mnist_config() -> ml_collections.ConfigDict:
  """Returns the data config for Fashion-MNIST: 28 px images, small crops, no colour jitter.

  Two 28 px global crops and four 16 px local crops (multiples of a patch size of 4). Crop
  scales are wider than ImageNet's because a 28 px image has little to spare, and blur is
  milder because sigma is in output pixels.
  """
  config = default_config()
  config.dataset = "fashion_mnist"
  config.eval_test_split = "test"
  config.num_classes = 10
  config.num_local_crops = 4
  config.global_crop_size = 28
  config.local_crop_size = 16
  config.global_crop_scale = (0.35, 1.0)
  config.local_crop_scale = (0.1, 0.35)
  config.blur_sigma = (0.1, 1.0)
  config.blur_probability_global = (0.5, 0.1)
  config.blur_probability_local = 0.2
  config.eval_image_size = 28
  config.eval_crop_fraction = 1.0
  config.shuffle_buffer_size = 20_000
  return config
