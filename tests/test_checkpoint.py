"""Tests of Orbax checkpointing: resume gives the same next step, retention, fine-tuning restore."""

import jax
import numpy as np
import pytest

from bam_jax import checkpoint
from bam_jax.train import state as state_lib
from test_train_step import Trainer


@pytest.fixture(scope="module")
def trainer():
  return Trainer(freeze=True, use_ema=True)


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(actual), jax.device_get(expected))


def test_resume_gives_same_next_step(trainer, tmp_path):
  state, _ = trainer.run(trainer.new_state(), 2)
  manager = checkpoint.create_checkpoint_manager(tmp_path, max_to_keep=2)
  assert checkpoint.save_state(manager, 2, state)
  manager.wait_until_finished()

  abstract = state_lib.abstract_state_with_sharding(state, trainer.state_sharding)
  restored = checkpoint.restore_latest_state(manager, abstract)
  manager.close()
  _assert_trees_equal(restored, state)
  for leaf, expected in zip(jax.tree.leaves(restored), jax.tree.leaves(trainer.state_sharding)):
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)

  # `state` is donated by this call, so the restored copy is stepped second.
  continued, continued_metrics = trainer.run(state, 1)
  resumed, resumed_metrics = trainer.run(restored, 1)
  _assert_trees_equal(resumed, continued)
  assert float(resumed_metrics[0]["loss"]) == float(continued_metrics[0]["loss"])
  assert int(resumed.step) == 3


def test_manager_keeps_latest_checkpoints(trainer, tmp_path):
  manager = checkpoint.create_checkpoint_manager(tmp_path, max_to_keep=2)
  state = trainer.new_state()
  for step in (2, 4, 6):
    assert checkpoint.save_state(manager, step, state)
  manager.wait_until_finished()
  assert manager.all_steps() == [4, 6]
  assert manager.latest_step() == 6
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4", "6"]
  manager.close()


def test_restore_for_finetuning(trainer, tmp_path):
  state, _ = trainer.run(trainer.new_state(), 1)
  manager = checkpoint.create_checkpoint_manager(tmp_path, max_to_keep=1)
  checkpoint.save_state(manager, 1, state)
  manager.wait_until_finished()
  manager.close()
  expected = jax.device_get(state)

  for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "1"):
    teacher = checkpoint.restore_for_finetuning(path)
    _assert_trees_equal(teacher, expected.teacher_params)
    assert isinstance(teacher["backbone"]["cls_token"], np.ndarray)
  student = checkpoint.restore_for_finetuning(tmp_path, use_teacher=False)
  _assert_trees_equal(student, expected.params)


def test_restore_for_finetuning_without_checkpoint(tmp_path):
  with pytest.raises(ValueError, match="No checkpoint found"):
    checkpoint.restore_for_finetuning(tmp_path)


def test_invalid_retention_rejected(tmp_path):
  with pytest.raises(ValueError, match="keep_checkpoints=0"):
    checkpoint.create_checkpoint_manager(tmp_path, max_to_keep=0)


def test_single_network_checkpoint_round_trip(tmp_path):
  trainer = Trainer(freeze=False, use_ema=False)
  state = trainer.new_state()
  manager = checkpoint.create_checkpoint_manager(tmp_path, max_to_keep=1)
  checkpoint.save_state(manager, 0, state)
  manager.wait_until_finished()

  abstract = state_lib.abstract_state_with_sharding(state, trainer.state_sharding)
  restored = checkpoint.restore_latest_state(manager, abstract)
  manager.close()
  assert restored.teacher_params is None
  _assert_trees_equal(restored, state)
  # Without a teacher, the fine-tuning restore falls back to the student.
  _assert_trees_equal(checkpoint.restore_for_finetuning(tmp_path), jax.device_get(state.params))


def test_relative_workdir_round_trip(trainer, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  state, _ = trainer.run(trainer.new_state(), 1)
  manager = checkpoint.create_checkpoint_manager("workdir/run", max_to_keep=1)
  assert checkpoint.save_state(manager, 1, state)
  manager.wait_until_finished()
  manager.close()
  assert (tmp_path / "workdir" / "run" / "checkpoints" / "1").is_dir()
  _assert_trees_equal(checkpoint.restore_for_finetuning("workdir/run"),
                      jax.device_get(state).teacher_params)
