"""Pre-training: schedules, optimizer, state, the pure train step and the trainer loop.

The loop itself is `bam_jax.train.trainer.train_and_evaluate`; it is not imported here because
it pulls in the TensorFlow input pipeline.
"""

from bam_jax.train.schedules import Durations, resolve_durations
from bam_jax.train.state import TrainState, build_network, create_sharded_train_state
from bam_jax.train.step import make_sharded_train_step, train_step

__all__ = [
    "Durations", "TrainState", "build_network", "create_sharded_train_state",
    "make_sharded_train_step", "resolve_durations", "train_step",
]
