"""A two-process run of the real entry point on 127.0.0.1, checked against one process.

Two `python -m bam_jax.main` processes, each with 4 CPU devices, join one 8-device job through
`jax.distributed` (coordinator on 127.0.0.1, Gloo for the cross-process CPU collectives). Each
reads its own half of the data. The test checks that they agree step by step, that only
process 0 writes the results, that k-NN covers each evaluation split exactly once, and that the
first loss equals that of one 8-device process fed both hosts' batches.
"""

import functools
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
import pytest

from bam_jax import data
from bam_jax.train import trainer

NUM_PROCESSES = 2
LOCAL_DEVICES = 4
TOTAL_STEPS = 2
# Odd sizes, so the hosts' shares differ by one example and the last batches carry padding.
EVAL_TRAIN_SPLIT = "train[:255]"
EVAL_TEST_SPLIT = "test[:201]"
TIMEOUT_SECONDS = 240
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# "[2] grad_norm=..., loss=4.20084, ..." from clu's logging writer, one line per logged step.
_SCALARS_LINE = re.compile(r"\] \[(\d+)\] (.*)$", re.MULTILINE)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _overrides(data_dir: str) -> dict[str, str | int | bool]:
  """Config overrides shared by the two-process run and the one-process reference."""
  return {
      "data.data_dir": data_dir,
      "total_steps": TOTAL_STEPS,
      "checkpoint_every_steps": 1,
      "data.eval_train_split": EVAL_TRAIN_SPLIT,
      "data.eval_test_split": EVAL_TEST_SPLIT,
      "knn.max_train_batches": -1,
      "knn.max_test_batches": -1,
      "knn.evaluate_baselines": True,
      # Without local crops the train step compiles in about half the time.
      "data.num_local_crops": 0,
  }


def _runlocal_config(overrides: Mapping[str, str | int | bool]) -> ml_collections.ConfigDict:
  path = os.path.join(REPO_ROOT, "configs", "fashion_mnist.py")
  spec = importlib.util.spec_from_file_location("fashion_mnist_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")
  for path, value in overrides.items():
    *parents, name = path.split(".")
    setattr(functools.reduce(getattr, parents, config), name, value)
  return config


def _scalars(log: str, name: str) -> dict[int, float]:
  """Returns {step: value} of scalar `name` from the logging writer's lines in `log`."""
  values = {}
  for step, fields in _SCALARS_LINE.findall(log):
    for field in fields.split(", "):
      key, _, value = field.partition("=")
      if key == name:
        values[int(step)] = float(value)
  return values


@pytest.fixture(scope="module")
def two_process_run(fashion_mnist_data_dir, tmp_path_factory):
  """Runs the entry point as 2 processes x 4 devices; returns (workdir, pids, logs)."""
  workdir = tmp_path_factory.mktemp("multiprocess") / "workdir"
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split()
       if not f.startswith("--xla_force_host_platform_device_count")]
      + [f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"])
  env["JAX_PLATFORMS"] = "cpu"
  # Gloo is JAX's default for CPU collectives across processes; set here so the test states it.
  env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"

  processes = []
  for process_id in range(NUM_PROCESSES):
    command = [
        sys.executable, "-m", "bam_jax.main",
        "--config=configs/fashion_mnist.py:runlocal", f"--workdir={workdir}",
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address={address}",
        f"--config.distributed.coordinator_bind_address={address}",
        f"--config.distributed.num_processes={NUM_PROCESSES}",
        f"--config.distributed.process_id={process_id}",
        *(f"--config.{path}={value}" for path, value in _overrides(fashion_mnist_data_dir).items()),
    ]
    processes.append(subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))

  logs = []
  deadline = time.monotonic() + TIMEOUT_SECONDS
  try:
    for process in processes:
      output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
      logs.append(output)
  except subprocess.TimeoutExpired:
    for process in processes:
      process.kill()
    pytest.fail(f"The two-process run did not finish within {TIMEOUT_SECONDS} s.")
  for process_id, (process, log) in enumerate(zip(processes, logs)):
    assert process.returncode == 0, (
        f"Process {process_id} exited with {process.returncode}:\n{log[-6000:]}")
  return workdir, [p.pid for p in processes], logs


def test_processes_join_one_job(two_process_run):
  _, _, logs = two_process_run
  for process_id, log in enumerate(logs):
    assert (f"Process {process_id} of {NUM_PROCESSES} joined the job; {LOCAL_DEVICES} local "
            f"and {NUM_PROCESSES * LOCAL_DEVICES} global devices.") in log


def test_processes_agree_on_every_step_and_on_knn(two_process_run):
  _, _, logs = two_process_run
  losses = [_scalars(log, "loss") for log in logs]
  assert sorted(losses[0]) == list(range(1, TOTAL_STEPS + 1))
  # The loss is one replicated value, so both processes must log the very same number.
  assert losses[0] == losses[1]
  assert all(np.isfinite(list(losses[0].values())))

  knn_lines = [re.findall(r"^k-NN top-1: .*$", log, re.MULTILINE) for log in logs]
  assert len(knn_lines[0]) == 1
  assert knn_lines[0] == knn_lines[1]


def test_only_process_zero_writes_results(two_process_run):
  workdir, pids, logs = two_process_run
  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == TOTAL_STEPS
  # The logging writer prints 6 significant digits.
  assert results["final_loss"] == pytest.approx(_scalars(logs[0], "loss")[TOTAL_STEPS], rel=1e-5)
  assert f"k-NN top-1: {results['knn_top1']:.2f}%" in logs[1]
  # TensorBoard event files are named after the writing process's pid.
  event_files = sorted(p.name for p in workdir.glob("events.out.tfevents.*"))
  assert len(event_files) == 1, event_files
  assert f".{pids[0]}." in event_files[0], (event_files, pids)
  # Checkpoints are written by both processes together (each its own part), finalised once.
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
  assert steps == [1, 2]
  for step in steps:
    assert (workdir / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").exists()


@pytest.fixture(scope="module")
def one_process_reference(fashion_mnist_data_dir, tmp_path_factory, two_process_run):
  """Trains one step in this process on 8 devices, fed the two hosts' batches side by side.

  A one-process run reads the whole split with one seed, so by design its batches differ from
  the two-process job's, where host p reads its half with seed + p. Feeding the concatenation
  of exactly those host batches makes the global batch, and so the first loss, the same.
  """
  del two_process_run  # Runs after it, so the two never compete for the 2 cores.
  config = _runlocal_config({**_overrides(fashion_mnist_data_dir), "total_steps": 1})
  make_host_iterator = data.make_pretrain_iterator

  def both_hosts(data_config, *, global_batch_size, seed):
    hosts = [make_host_iterator(data_config, global_batch_size=global_batch_size, seed=seed,
                                process_index=p, process_count=NUM_PROCESSES)
             for p in range(NUM_PROCESSES)]
    for batches in zip(*hosts):
      yield {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}

  workdir = tmp_path_factory.mktemp("one_process")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(data, "make_pretrain_iterator", both_hosts)
    results = trainer.train_and_evaluate(config, workdir)
  return results


def test_first_loss_matches_one_process(two_process_run, one_process_reference):
  assert jax.device_count() == NUM_PROCESSES * LOCAL_DEVICES
  _, _, logs = two_process_run
  assert _scalars(logs[0], "loss")[1] == pytest.approx(
      one_process_reference["final_loss"], rel=2e-5)


def test_knn_covers_each_split_once(two_process_run, one_process_reference):
  workdir, _, _ = two_process_run
  results = json.loads((workdir / "results.json").read_text())
  baselines = json.loads((workdir / "baselines.json").read_text())
  # 255 and 201 split as 128 + 127 and 101 + 100: each host pads its last batch, and the padding
  # must be dropped while every real row is kept once.
  assert (results["num_train"], results["num_test"]) == (255, 201)
  assert (one_process_reference["num_train"], one_process_reference["num_test"]) == (255, 201)
  # The same initial weights see the same images. A row lost or counted twice on either host
  # would change the counts above or, almost surely, these accuracies. Raw pixels test
  # host-local features, and the randomly initialised backbone tests global-array features.
  for name in ("knn_top1_raw_pixels", "knn_top1_random_init"):
    assert baselines[name] == pytest.approx(one_process_reference[name], abs=1e-9), name
