r"""BAM pre-training of ViT-S/16 on an image folder, with the authors' published ImageNet recipe.

Images are read from `data.image_folder/<split>/<class>/<image>` (JPEG or PNG); files that are
not images or fail to decode are skipped with a counted warning. The defaults fit ImageNet-1k
extracted into that layout (`train/` with 1,281,167 images and `val/` with 50,000, 1,000 class
folders each), the layout the authors' PyTorch scripts read. Every recipe value is the published
ViT-S/16 one (see configs/imagenet.py:vit_small): 400 epochs at global batch 4096, 2 x 224 px
global and 6 x 96 px local crops, tau 0.1, eps 0.05, 3 Sinkhorn iterations, top-k 128, head
4096-4096-4096, EMA teacher 0.995 -> 1, AdamW lr 3e-4 per 256 images after 40 warm-up epochs and
a cosine to 1e-3, weight decay 0.04 -> 0.4, clipping at 0.3. Run on every host:

  python -m bam_jax.main --config=configs/image_folder.py --workdir=gs://BUCKET/bam_folder \
      --config.data.image_folder=/data/imagenet --config.distributed.enabled=True

For other data, also set the number of images in the train split and the number of classes, and
scale the batch and top-k to the data, e.g.
  --config.num_train_examples=120000 --config.data.num_classes=200 \
  --config.data.eval_test_split=val --config.global_batch_size=1024 --config.objective.top_k=32
because the epoch length is computed from `num_train_examples`, not counted from the folder.
launch/tpu_vm.sh and launch/gpu_slurm.sh run the command on every host.
`--config=configs/image_folder.py:runlocal` selects a tiny variant (64 px and 32 px crops, 3
steps, k-NN on a few batches) for checking a folder end to end on a CPU.
"""

import ml_collections

from bam_jax import parallel
from bam_jax.data import config as data_config

# ImageNet-1k train split; set --config.num_train_examples for any other folder.
NUM_TRAIN_EXAMPLES = 1_281_167
GLOBAL_BATCH_SIZE = 4096


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the image-folder config; `variant="runlocal"` returns the tiny smoke-test variant."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.global_batch_size = GLOBAL_BATCH_SIZE
  config.num_train_examples = NUM_TRAIN_EXAMPLES
  config.steps_per_epoch = 0
  config.total_epochs = 400.0
  config.total_steps = 0

  config.data = data_config.default_config()
  # A path that does not exist, so a run without --config.data.image_folder=DIR stops with
  # "Image folder ... not found" instead of falling back to TFDS.
  config.data.image_folder = "/path/to/image_folder"
  config.data.train_split = "train"
  config.data.eval_train_split = "train"
  config.data.eval_test_split = "val"
  config.data.num_classes = 1000

  config.model = ml_collections.ConfigDict()
  config.model.variant = "small"
  config.model.patch_size = 16
  config.model.mlp_ratio = 4.0
  config.model.freeze_patch_embedding = True
  config.model.drop_path_rate = 0.0
  config.model.head_hidden_dim = 4096
  config.model.head_output_dim = 4096
  config.model.head_layers = 3
  # bfloat16 compute on TPU and GPU; parameters stay float32 and the objective runs in float32.
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
  # k-NN on the eval splits every 20 epochs.
  config.knn_every_steps = 20 * (NUM_TRAIN_EXAMPLES // GLOBAL_BATCH_SIZE)

  config.knn = ml_collections.ConfigDict()
  config.knn.k = 20
  config.knn.temperature = 0.07
  # Also report k-NN of the randomly initialised backbone and of raw pixels, once per workdir.
  config.knn.evaluate_baselines = False
  config.knn.batch_size = 1024
  # -1 embeds the whole split; a positive value stops after that many batches.
  config.knn.max_train_batches = -1
  config.knn.max_test_batches = -1

  config.distributed = parallel.distributed_config()

  if variant == "runlocal":
    _make_runlocal(config)
  elif variant:
    raise ValueError(f"Unknown config variant {variant!r}; the only variant is 'runlocal'.")
  return config


def _make_runlocal(config: ml_collections.ConfigDict) -> None:
  """Shrinks `config` in place to a tiny model, batch and run for a CPU."""
  config.global_batch_size = 32
  config.total_steps = 3
  config.optim.warmup_epochs = 0.0
  config.data.num_local_crops = 2
  config.data.shuffle_buffer_size = 256
  config.data.global_crop_size = 64
  config.data.local_crop_size = 32
  config.data.eval_image_size = 64
  config.model.variant = "mu"
  config.model.patch_size = 16
  config.model.dtype = "float32"
  config.model.head_hidden_dim = 64
  config.model.head_output_dim = 64
  config.model.head_layers = 2
  config.objective.top_k = 8
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.knn.batch_size = 64
  config.knn.max_train_batches = 2
  config.knn.max_test_batches = 1
  config.knn.evaluate_baselines = False
  # The epoch length does not depend on the folder's true size, so any folder runs 3 steps.
  config.steps_per_epoch = 1
