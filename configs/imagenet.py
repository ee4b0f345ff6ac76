r"""BAM pre-training of ViT-S/16 or ViT-B/16 on ImageNet-1k with the authors' published recipe.

400 epochs at global batch 4096: 2 global crops of 224 px and 6 local crops of 96 px, projection
head 4096-4096-4096, EMA teacher (momentum 0.995 -> 1 on a cosine), AdamW with lr 3e-4 per 256
images (4.8e-3 at batch 4096) after 40 warm-up epochs and a cosine to 1e-3, weight decay
0.04 -> 0.4, clipping at global norm 0.3, tau 0.1, eps 0.05, 3 Sinkhorn iterations, top-k 128.

The `imagenet2012` TFDS dataset must be prepared in `data.data_dir` beforehand. Run on every host
of a Cloud TPU VM (or every node of a GPU cluster):

  python -m bam_jax.main --config=configs/imagenet.py:vit_small --workdir=gs://BUCKET/bam_vit_s16 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --config.distributed.enabled=True

`:vit_base` selects ViT-B/16 with the same recipe; its published linear-probe top-1 on ImageNet is
78.1%. Running the same command again resumes from the latest checkpoint in the workdir.
"""

import ml_collections

from bam_jax import parallel
from bam_jax.data import config as data_config

# Config variant -> ViT size; the rest of the recipe is the same for both.
MODEL_VARIANTS = {"vit_small": "small", "vit_base": "base"}


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the published recipe for `variant` "vit_small" (the default) or "vit_base"."""
  variant = variant or "vit_small"
  if variant not in MODEL_VARIANTS:
    raise ValueError(
        f"Unknown config variant {variant!r}; use configs/imagenet.py:vit_small or "
        "configs/imagenet.py:vit_base.")
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.global_batch_size = 4096
  config.num_train_examples = 1_281_167
  config.steps_per_epoch = 0
  config.total_epochs = 400.0
  config.total_steps = 0

  config.data = data_config.default_config()

  config.model = ml_collections.ConfigDict()
  config.model.variant = MODEL_VARIANTS[variant]
  config.model.patch_size = 16
  config.model.mlp_ratio = 4.0
  config.model.freeze_patch_embedding = True
  config.model.drop_path_rate = 0.0
  config.model.head_hidden_dim = 4096
  config.model.head_output_dim = 4096
  config.model.head_layers = 3
  # bfloat16 compute on TPU; parameters stay float32 and the objective runs in float32.
  config.model.dtype = "bfloat16"

  config.objective = ml_collections.ConfigDict()
  config.objective.temperature = 0.1
  config.objective.epsilon = 0.05
  config.objective.sinkhorn_iterations = 3
  config.objective.top_k = 128

  config.teacher = ml_collections.ConfigDict()
  config.teacher.use_ema = True
  config.teacher.momentum = 0.995
  config.teacher.momentum_end = 1.0

  config.optim = ml_collections.ConfigDict()
  config.optim.lr_per_256 = 3e-4
  # Absolute, not scaled with the batch size.
  config.optim.min_lr = 1e-3
  config.optim.warmup_epochs = 40.0
  config.optim.weight_decay = 0.04
  config.optim.weight_decay_end = 0.4
  config.optim.clip_norm = 0.3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999

  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  # k-NN on the 50,000 validation images against all 1.28M train images, every 20 epochs.
  config.knn_every_steps = 20 * (1_281_167 // 4096)

  config.knn = ml_collections.ConfigDict()
  config.knn.k = 20
  config.knn.temperature = 0.07
  # Also report k-NN of the randomly initialised backbone and of raw pixels, once per workdir.
  config.knn.evaluate_baselines = False
  config.knn.batch_size = 1024
  config.knn.max_train_batches = -1
  config.knn.max_test_batches = -1

  config.distributed = parallel.distributed_config()
  return config
