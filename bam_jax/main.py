r"""Command-line entry point for BAM pre-training.

  python -m bam_jax.main --config=configs/fashion_mnist.py --workdir=workdir/fashion_mnist

Any config field can be overridden, e.g. `--config.global_batch_size=128`. Running the same
command again resumes from the latest checkpoint in the workdir. Each config's docstring gives
its own run command.
"""

import logging as logging_lib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from bam_jax import parallel
from bam_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file, optionally with ':variant'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for the config, checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraryFilter(logging_lib.Filter):
  """Drops INFO records of Orbax, whose per-save messages would bury the progress lines."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    return record.levelno >= logging_lib.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected command-line arguments: {argv[1:]}.")
  logging.get_absl_handler().addFilter(_QuietLibraryFilter())
  config = _CONFIG.value
  # Must come before any other JAX call in a multi-host job.
  parallel.initialize_distributed(config)

  logging.info("Config:\n%s", config)
  try:
    results = trainer.train_and_evaluate(config, _WORKDIR.value)
  except FileNotFoundError as error:
    # Missing input files (e.g. the Fashion-MNIST archives) end the run with one line that states
    # what to install or which config field to set, instead of a traceback.
    raise SystemExit(f"Error: {error}") from error
  print(f"k-NN top-1: {results['knn_top1']:.2f}% on {results['num_test']} test images "
        f"(step {results['step']}); results in {_WORKDIR.value}/results.json")
  if "knn_top1_random_init" in results:
    print(f"Same k-NN of the backbone at random initialisation: "
          f"{results['knn_top1_random_init']:.2f}%; of raw pixels: "
          f"{results['knn_top1_raw_pixels']:.2f}%")


if __name__ == "__main__":
  app.run(main)
