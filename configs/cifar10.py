r"""BAM pre-training of a ViT-Tiny/4 on CIFAR-10 (32 px images) with k-NN on the test split.

The authors publish ImageNet recipes only. This config keeps their objective (tau 0.1, eps 0.05,
3 Sinkhorn iterations), projection head (4096-4096-4096), EMA teacher (0.995 -> 1), AdamW
hyper-parameters (lr 3e-4 per 256 images, weight decay 0.04 -> 0.4, clipping at 0.3), 400 epochs
with 40 warm-up epochs, and 2 global + 6 local crops. Adapted to 32 px images (choices of this
config, not published values): ViT-Tiny with 4 px patches (8 x 8 tokens per 32 px global crop,
4 x 4 per 16 px local crop), global batch 512, top-k 16 (the recipe's 128 of 8192 keys is 1/64,
and 1/64 of the 1024 keys here is 16), min_lr 1e-6 because the recipe's absolute 1e-3 is above
the peak of 6e-4 at this batch size, and no Gaussian blur, because a sigma of up to 2 px (the
recipe's range, in output pixels) removes most of the detail of a 32 px crop.

The `cifar10` TFDS dataset must be prepared in `data.data_dir` beforehand
(`tfds build cifar10 --data_dir=DIR`); training downloads nothing. Run:

  python -m bam_jax.main --config=configs/cifar10.py --workdir=workdir/cifar10 \
      --config.data.data_dir=~/tensorflow_datasets

On a Cloud TPU VM or a GPU cluster, launch/tpu_vm.sh and launch/gpu_slurm.sh run the same
command on every host. `--config=configs/cifar10.py:runlocal` selects a tiny variant that trains
3 steps and evaluates k-NN on a few batches, for checking the set-up end to end on a CPU. The
same config serves CIFAR-100 with `--config.data.dataset=cifar100 --config.data.num_classes=100`.
"""

import ml_collections

from bam_jax import parallel
from bam_jax.data import config as data_config

NUM_TRAIN_EXAMPLES = 50_000


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the CIFAR-10 config; `variant="runlocal"` returns the tiny smoke-test variant."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.global_batch_size = 512
  config.num_train_examples = NUM_TRAIN_EXAMPLES
  config.steps_per_epoch = 0
  config.total_epochs = 400.0
  config.total_steps = 0

  config.data = data_config.default_config()
  config.data.dataset = "cifar10"
  config.data.train_split = "train"
  config.data.eval_train_split = "train"
  config.data.eval_test_split = "test"
  config.data.num_classes = 10
  config.data.global_crop_size = 32
  config.data.local_crop_size = 16
  config.data.blur_probability_global = (0.0, 0.0)
  config.data.blur_probability_local = 0.0
  config.data.eval_image_size = 32
  config.data.eval_crop_fraction = 1.0
  # Encoded 32 px PNGs are small, so the buffer can contain the whole train split.
  config.data.shuffle_buffer_size = NUM_TRAIN_EXAMPLES

  config.model = ml_collections.ConfigDict()
  config.model.variant = "tiny"
  config.model.patch_size = 4
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
  config.objective.top_k = 16

  config.teacher = ml_collections.ConfigDict()
  config.teacher.use_ema = True
  config.teacher.momentum = 0.995
  config.teacher.momentum_end = 1.0

  config.optim = ml_collections.ConfigDict()
  config.optim.lr_per_256 = 3e-4
  # Absolute, not scaled with the batch size.
  config.optim.min_lr = 1e-6
  config.optim.warmup_epochs = 40.0
  config.optim.weight_decay = 0.04
  config.optim.weight_decay_end = 0.4
  config.optim.clip_norm = 0.3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999

  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  # k-NN on the 10,000 test images against the 50,000 train images, every 20 epochs.
  config.knn_every_steps = 20 * (NUM_TRAIN_EXAMPLES // 512)

  config.knn = ml_collections.ConfigDict()
  config.knn.k = 20
  config.knn.temperature = 0.07
  # Also report k-NN of the randomly initialised backbone and of raw pixels, once per workdir.
  config.knn.evaluate_baselines = True
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
  config.model.variant = "mu"
  config.model.patch_size = 8
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
