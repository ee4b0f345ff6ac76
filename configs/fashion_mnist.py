r"""BAM pre-training of a ViT-mu/7 on Fashion-MNIST, sized for a CPU; the default demo config.

Run it (from the repository root):

  python -m bam_jax.main --config=configs/fashion_mnist.py --workdir=workdir/fashion_mnist \
      --config.data.fashion_mnist_dir=/usr/share/datasets/fashion-mnist

`make demo` runs the same command. Running it again resumes from the latest checkpoint in the
workdir. `--config=configs/fashion_mnist.py:runlocal` selects a tiny variant that trains a few
steps and evaluates k-NN on a few batches, for checking the set-up end to end in about a minute.

Any field can be overridden on the command line, e.g. `--config.total_epochs=4`.
"""

import ml_collections

from bam_jax import parallel
from bam_jax.data import config as data_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the demo config; `variant="runlocal"` returns the tiny smoke-test variant."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Durations: `total_epochs` is resolved to steps with `num_train_examples` (the Fashion-MNIST
  # train split has 60,000 images); a positive `total_steps` or `steps_per_epoch` overrides it.
  config.global_batch_size = 256
  config.num_train_examples = 60_000
  config.steps_per_epoch = 0
  config.total_epochs = 2.0
  config.total_steps = 0

  config.data = data_config.fashion_mnist_config()
  # 7 px patches give 4 x 4 tokens per 28 px global crop and 2 x 2 per 14 px local crop. On a
  # 2-core CPU a step (batch 256) took 1.3 s, against 4.1 s with 4 px patches and 16 px local
  # crops (benchmark of the train step alone, synthetic batch).
  config.data.local_crop_size = 14

  config.model = ml_collections.ConfigDict()
  config.model.variant = "mu"
  config.model.patch_size = 7
  config.model.mlp_ratio = 4.0
  config.model.freeze_patch_embedding = True
  config.model.drop_path_rate = 0.0
  config.model.head_hidden_dim = 512
  config.model.head_output_dim = 256
  config.model.head_layers = 3
  config.model.dtype = "float32"

  config.objective = ml_collections.ConfigDict()
  config.objective.temperature = 0.1
  config.objective.epsilon = 0.05
  config.objective.sinkhorn_iterations = 3
  # 2 x 256 = 512 keys per step; 32 keeps the strongest 6% of each target row.
  config.objective.top_k = 32

  config.teacher = ml_collections.ConfigDict()
  config.teacher.use_ema = True
  # A faster-moving teacher than the 0.995 of the 400-epoch ImageNet recipe, for a short run.
  config.teacher.momentum = 0.99
  config.teacher.momentum_end = 1.0

  config.optim = ml_collections.ConfigDict()
  config.optim.lr_per_256 = 1e-3
  config.optim.min_lr = 1e-5
  config.optim.warmup_epochs = 0.1
  config.optim.weight_decay = 0.04
  config.optim.weight_decay_end = 0.4
  config.optim.clip_norm = 0.3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999

  config.log_every_steps = 10
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 2
  # 0 evaluates k-NN only at the end of training.
  config.knn_every_steps = 0

  config.knn = ml_collections.ConfigDict()
  config.knn.k = 20
  config.knn.temperature = 0.07
  # Also report k-NN of the randomly initialised backbone and of raw pixels, once per workdir.
  config.knn.evaluate_baselines = True
  config.knn.batch_size = 512
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
  """Shrinks `config` in place to a tiny model, batch and run."""
  config.global_batch_size = 32
  config.total_steps = 3
  config.optim.warmup_epochs = 0.0
  config.data.num_local_crops = 2
  config.data.shuffle_buffer_size = 256
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
