"""Input pipelines: TFDS and image-folder sources, multi-crop augmentation, per-host batches."""

from bam_jax.data.config import default_config
from bam_jax.data.config import fashion_mnist_config
from bam_jax.data.pipeline import make_eval_iterators
from bam_jax.data.pipeline import make_pretrain_iterator

__all__ = [
    "default_config",
    "fashion_mnist_config",
    "make_eval_iterators",
    "make_pretrain_iterator",
]
