"""The pre-training loop: mesh, data, sharded state, resume, train, evaluate, save.

`train_and_evaluate(config, workdir)` reads top to bottom in that order. Everything it writes
lives in `workdir`: `config.json`, `checkpoints/`, TensorBoard events, `baselines.json` and
`results.json`. Calling it again with the same workdir resumes from the latest checkpoint.
"""

import functools
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
from jax.sharding import Mesh

from bam_jax import checkpoint
from bam_jax import data
from bam_jax import objective
from bam_jax import parallel
from bam_jax.evaluate import knn
from bam_jax.train import optimizer as optimizer_lib
from bam_jax.train import schedules
from bam_jax.train import state as state_lib
from bam_jax.train import step as step_lib

CONFIG_FILE = "config.json"
BASELINES_FILE = "baselines.json"
RESULTS_FILE = "results.json"


def batch_shapes(data_config: ml_collections.ConfigDict,
                 global_batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Returns the shapes of one global pre-training batch as the data config describes it."""
  size = data_config.global_crop_size
  shapes = {
      "global_crops": jax.ShapeDtypeStruct(
          (global_batch_size, data_config.num_global_crops, size, size, 3), jnp.float32),
  }
  if data_config.num_local_crops > 0:
    size = data_config.local_crop_size
    shapes["local_crops"] = jax.ShapeDtypeStruct(
        (global_batch_size, data_config.num_local_crops, size, size, 3), jnp.float32)
  return shapes


@functools.lru_cache(maxsize=None)
def _jitted_embed(network: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
  """Returns the jitted backbone embedding, compiled once per network and image shape."""
  def embed(params, images):
    return network.apply({"params": params}, images, method="embed").astype(jnp.float32)
  return jax.jit(embed)


def make_embed_fn(network: nn.Module, params: Any, mesh: Mesh,
                  ) -> Callable[[np.ndarray], jax.Array]:
  """Returns images -> backbone CLS features for k-NN.

  The function takes host-local images `[b, H, W, 3]` and returns global float32 features
  `[b * process_count, width]` sharded on the batch axis.
  """
  embed = _jitted_embed(network)

  def embed_fn(images: np.ndarray) -> jax.Array:
    return embed(params, parallel.host_batch_to_global({"image": images}, mesh)["image"])

  return embed_fn


def run_knn(config: ml_collections.ConfigDict, embed_fn: Callable[[np.ndarray], Any],
            ) -> dict[str, float | int]:
  """Runs the weighted k-NN evaluation of `embed_fn` on the configured eval splits.

  `config.knn.max_train_batches` / `max_test_batches`, when positive, stop each split early.
  """
  train_iter_fn, test_iter_fn = data.make_eval_iterators(
      config.data, global_batch_size=config.knn.batch_size)

  def limited(iterator: Iterator[Any], max_batches: int) -> Iterator[Any]:
    return itertools.islice(iterator, max_batches) if max_batches > 0 else iterator

  return knn.run_knn_eval(
      embed_fn,
      limited(train_iter_fn(), config.knn.max_train_batches),
      limited(test_iter_fn(), config.knn.max_test_batches),
      num_classes=config.data.num_classes,
      k=config.knn.k,
      temperature=config.knn.temperature,
  )


def _raw_pixels(images: np.ndarray) -> np.ndarray:
  """Flattens images `[b, H, W, C]` to features `[b, H * W * C]`, the raw-pixel k-NN baseline."""
  return images.reshape(images.shape[0], -1)


def _write_json(path: epath.Path, values: Mapping[str, Any]) -> None:
  if jax.process_index() == 0:
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _check_finite(metrics: Mapping[str, Any], step: int, workdir: epath.Path) -> None:
  """Raises FloatingPointError when the loss of `step` is NaN or infinite."""
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise FloatingPointError(
        f"The loss became {loss} at step {step}; training stopped. The last checkpoint in "
        f"{checkpoint.checkpoint_directory(workdir)} predates it. Lower config.optim.lr_per_256 "
        "or config.optim.clip_norm, or check the input data.")


def _evaluate_baselines(config: ml_collections.ConfigDict, network: nn.Module, params: Any,
                        mesh: Mesh, workdir: epath.Path) -> dict[str, float]:
  """k-NN top-1 of the randomly initialised backbone and of raw pixels, computed once."""
  path = workdir / BASELINES_FILE
  if path.exists():
    return json.loads(path.read_text())
  logging.info("Evaluating the k-NN baselines: random initialisation and raw pixels.")
  baselines = {
      "knn_top1_random_init": run_knn(config, make_embed_fn(network, params, mesh))["knn_top1"],
      "knn_top1_raw_pixels": run_knn(config, _raw_pixels)["knn_top1"],
  }
  _write_json(path, baselines)
  return baselines


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """Pre-trains with BAM as `config` specifies, then evaluates k-NN; returns the final results.

  Returns:
    The contents of `workdir/results.json`: the final step, k-NN top-1 (percent) of the teacher
    backbone (the student's in single-network mode), the number of train and test images, the
    last logged loss, and the baselines when `config.knn.evaluate_baselines` is set.
  """
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _write_json(workdir / CONFIG_FILE, json.loads(config.to_json_best_effort()))

  mesh = parallel.create_mesh()
  parallel.check_global_batch_size(config.global_batch_size, mesh)
  durations = schedules.resolve_durations(config, config.get("num_train_examples"))
  logging.info("Training for %d steps (%d per epoch, %d warm-up) on %d devices.",
               durations.total_steps, durations.steps_per_epoch, durations.warmup_steps,
               mesh.devices.size)

  # Model, optimizer and a state that is created directly in its sharded layout.
  network = state_lib.build_network(config.model)
  optimizer = optimizer_lib.make_optimizer(
      config.optim, global_batch_size=config.global_batch_size, durations=durations,
      freeze_patch_embedding=config.model.freeze_patch_embedding)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  state, state_sharding = state_lib.create_sharded_train_state(
      init_rng, network, optimizer, batch_shapes(config.data, config.global_batch_size), mesh,
      use_ema_teacher=config.teacher.use_ema)

  # Baselines use the initial weights, so they run before any checkpoint replaces them.
  baselines = {}
  if config.knn.get("evaluate_baselines", False):
    baselines = _evaluate_baselines(config, network, state.params, mesh, workdir)

  if config.checkpoint_every_steps < 1:
    raise ValueError(
        f"checkpoint_every_steps={config.checkpoint_every_steps} must be at least 1.")
  manager = checkpoint.create_checkpoint_manager(workdir, max_to_keep=config.keep_checkpoints)
  restored = checkpoint.restore_latest_state(
      manager, state_lib.abstract_state_with_sharding(state, state_sharding))
  if restored is not None:
    state = restored
  else:
    logging.info("No checkpoint in %s; training starts from step 0.",
                 checkpoint.checkpoint_directory(workdir))
  initial_step = int(state.step)

  loss_fn = objective.make_sharded_bam_loss(
      mesh, axis_name=parallel.DATA_AXIS,
      num_global_crops=config.data.num_global_crops,
      temperature=config.objective.temperature,
      epsilon=config.objective.epsilon,
      sinkhorn_iterations=config.objective.sinkhorn_iterations,
      top_k=config.objective.top_k)
  train_step = step_lib.make_sharded_train_step(
      network=network, optimizer=optimizer, loss_fn=loss_fn,
      momentum_schedule=schedules.momentum_schedule(config.teacher, durations), mesh=mesh,
      state_sharding=state_sharding)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=durations.total_steps, writer=writer, every_steps=config.log_every_steps)

  last_metrics: dict[str, float] = {}
  if initial_step < durations.total_steps:
    state, last_metrics = _train_loop(
        config, workdir, state, train_step, dropout_rng, mesh, manager, writer, report_progress,
        initial_step, durations.total_steps, network)
  else:
    logging.info("The checkpoint of step %d is already at the end of training.", initial_step)
  manager.wait_until_finished()
  manager.close()

  eval_params = state.teacher_params if state.teacher_params is not None else state.params
  final = run_knn(config, make_embed_fn(network, eval_params, mesh))
  writer.write_scalars(int(state.step), {"knn_top1": final["knn_top1"]})
  writer.close()

  results = {"step": int(state.step), **final, **baselines}
  if "loss" in last_metrics:
    results["final_loss"] = last_metrics["loss"]
  _write_json(workdir / RESULTS_FILE, results)
  logging.info("Final results (also in %s): %s", workdir / RESULTS_FILE, results)
  return results


def _train_loop(config, workdir, state, train_step, dropout_rng, mesh, manager, writer,
                report_progress, initial_step, total_steps, network,
                ) -> tuple[state_lib.TrainState, dict[str, float]]:
  """Runs steps `initial_step + 1 .. total_steps`; returns the final state and last metrics."""
  # NOTE: the input pipeline does not checkpoint its position. A resumed run reseeds it with
  # the step, so it draws fresh augmentations rather than replaying the first batches.
  train_iter = data.make_pretrain_iterator(
      config.data, global_batch_size=config.global_batch_size,
      seed=config.seed + initial_step)

  last_metrics: dict[str, Any] = {}
  pending: tuple[int, dict[str, jax.Array]] | None = None
  log_start_time, log_start_step = time.perf_counter(), initial_step

  for step in range(initial_step + 1, total_steps + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = parallel.host_batch_to_global(next(train_iter), mesh)
      state, metrics = train_step(state, batch, dropout_rng)

    # The previous step's loss is ready by now, so checking it does not stall the device.
    if pending is not None:
      _check_finite(pending[1], pending[0], workdir)
    pending = (step, metrics)
    report_progress(step)

    if step % config.log_every_steps == 0 or step == total_steps:
      _check_finite(metrics, step, workdir)
      elapsed = time.perf_counter() - log_start_time
      images_per_second = (step - log_start_step) * config.global_batch_size / elapsed
      last_metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
      writer.write_scalars(step, {
          **last_metrics,
          "images_per_second": images_per_second,
          "images_per_second_per_device": images_per_second / mesh.devices.size,
      })
      # The rate of the last interval, because the first one includes compilation.
      seconds_per_step = elapsed / (step - log_start_step)
      logging.info(
          "step %d/%d (%.1f%%): loss %.4f, lr %.3g, images/s %.1f, ETA %.1f min", step,
          total_steps, 100.0 * step / total_steps, last_metrics["loss"],
          last_metrics["learning_rate"], images_per_second,
          seconds_per_step * (total_steps - step) / 60.0)
      log_start_time, log_start_step = time.perf_counter(), step

    if step % config.checkpoint_every_steps == 0 or step == total_steps:
      _check_finite(metrics, step, workdir)
      checkpoint.save_state(manager, step, state)
    if step % config.log_every_steps == 0:
      # A background save that failed stops the run here, not at the next save.
      manager.check_for_errors()

    if config.knn_every_steps > 0 and step % config.knn_every_steps == 0 and (
        step != total_steps):
      eval_params = state.teacher_params if state.teacher_params is not None else state.params
      result = run_knn(config, make_embed_fn(network, eval_params, mesh))
      writer.write_scalars(step, {"knn_top1": result["knn_top1"]})

  writer.flush()
  return state, last_metrics
