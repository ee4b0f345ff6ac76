"""Tests of the configs and of the command line: overrides, outputs in the workdir, resume."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from bam_jax.train import schedules
from bam_jax.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.py"))
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _load(path: pathlib.Path, variant: str | None = None):
  spec = importlib.util.spec_from_file_location(f"{path.stem}_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_complete(path):
  module_doc = path.read_text().split('"""')[1]
  assert f"--config=configs/{path.name}" in module_doc

  config = _load(path)
  durations = schedules.resolve_durations(config, config.num_train_examples)
  assert 0 <= durations.warmup_steps < durations.total_steps
  assert config.global_batch_size % 8 == 0
  assert config.knn.batch_size % 8 == 0
  state_lib.build_network(config.model)


def test_imagenet_recipe_durations():
  config = _load(REPO / "configs" / "imagenet.py", "vit_base")
  durations = schedules.resolve_durations(config, config.num_train_examples)
  assert durations.steps_per_epoch == 312
  assert durations.total_steps == 400 * 312
  assert durations.warmup_steps == 40 * 312
  assert schedules.peak_learning_rate(config.optim, config.global_batch_size) == pytest.approx(
      4.8e-3)
  assert config.model.variant == "base"
  assert config.model.patch_size == 16
  assert _load(REPO / "configs" / "imagenet.py").model.variant == "small"
  with pytest.raises(ValueError, match="configs/imagenet.py:vit_base"):
    _load(REPO / "configs" / "imagenet.py", "vit_huge")


def test_unknown_variant_rejected():
  with pytest.raises(ValueError, match="runlocal"):
    _load(REPO / "configs" / "fashion_mnist.py", "huge")
  config = _load(REPO / "configs" / "fashion_mnist.py")
  config.model.variant = "huge"
  with pytest.raises(ValueError, match="model.variant='huge'"):
    state_lib.build_network(config.model)


def _run_main(workdir: pathlib.Path, *overrides: str) -> subprocess.CompletedProcess:
  command = [
      sys.executable, "-m", "bam_jax.main",
      "--config=configs/fashion_mnist.py:runlocal",
      f"--workdir={workdir}",
      f"--config.data.fashion_mnist_dir={FASHION_MNIST_DIR}",
      f"--config.data.data_dir={workdir.parent / 'tensorflow_datasets'}",
      *overrides,
  ]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=os.environ.copy())
  assert result.returncode == 0, result.stderr[-5000:]
  return result


@pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST idx files are not installed (Debian package dataset-fashion-mnist)")
def test_command_line_overrides_and_resume(tmp_path):
  workdir = tmp_path / "run"
  _run_main(workdir, "--config.total_steps=2", "--config.seed=7",
            "--config.model.head_output_dim=48")

  config = json.loads((workdir / "config.json").read_text())
  assert config["seed"] == 7
  assert config["total_steps"] == 2
  assert config["model"]["head_output_dim"] == 48
  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == 2
  assert results["num_test"] == 64
  assert 0.0 <= results["knn_top1"] <= 100.0
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  assert list(workdir.glob("events.out.tfevents.*"))

  # The same command with a longer run continues from step 2 instead of starting over.
  second = _run_main(workdir, "--config.total_steps=3", "--config.seed=7",
                     "--config.model.head_output_dim=48")
  assert "Restoring checkpoint of step 2" in second.stderr
  assert "step 3/3" in second.stderr
  assert "step 1/3" not in second.stderr
  assert json.loads((workdir / "results.json").read_text())["step"] == 3
  assert "k-NN top-1" in second.stdout
