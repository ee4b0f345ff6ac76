r"""Benchmarks the jitted, sharded BAM train step: time, images/s, compile time, memory, FLOP/s.

The step is the trainer's own: `bam_jax.train.step.make_sharded_train_step` on a state made by
`bam_jax.train.state.create_sharded_train_state`, fed synthetic batches of the configured shapes
(the input pipeline is not timed). Two cases:

  demo: configs/fashion_mnist.py as it is (ViT-mu/7, batch 256, 2 x 28 px + 4 x 14 px crops).
  tiny: ViT-Tiny/4, batch 128, 2 x 32 px global + 4 x 16 px local crops, float32, EMA teacher on
        all crops, top-k 64. The head is the recipe's Linear(192, 4096)-GELU-Linear(4096, 4096)-
        GELU-Linear(4096, 4096). Every other field comes from configs/fashion_mnist.py.

Each case runs in a fresh subprocess so that its peak resident memory is its own. The matmul
peak is the median time of a float32 `jnp.dot` of two 4096 x 4096 matrices, measured in its own
subprocess on the same machine; "of peak" is the step's achieved FLOP/s over that peak. The FLOP
count of a step is XLA's cost analysis of the compiled step (`compiled.cost_analysis()["flops"]`),
so it counts every operation XLA emits, not only the matmuls.

Run (about 5 minutes on a 2-core machine):
  .venv/bin/python benchmarks/train_step.py --cases=demo,tiny --repeats=5

`--breakdown` also times parts of the step separately (teacher forward, student forward and
backward of backbone and head, the objective) and prints a second table.

Prints Markdown tables. Step time is the median of --repeats steps after --warmup steps. "XLA
peak" is the compiled step's buffer assignment (arguments + outputs + temporaries - donated
aliases) per device; "process peak" is the subprocess's maximum resident set size, which
includes the Python, JAX runtime and the compile. The load average (1 minute,
from os.getloadavg) is taken right after each case, because other processes on the machine
slow the step down. "CPU s per step" is the process's user + system CPU time per timed step; it
grows much less than the wall time when other processes compete for the cores, so CPU time over
the number of cores is a rough estimate of the step time on an idle machine (rough, because
XLA's worker threads also spend CPU time spinning while they wait).

XLA_FLAGS set in the environment reach every subprocess, e.g. XLA_FLAGS=--xla_cpu_use_onednn=true
runs the step with XLA's oneDNN matmul and convolution kernels (the matmul peak uses the same).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(case: str):
  """Returns the ml_collections config of a benchmark case."""
  sys.path.insert(0, _REPOSITORY)
  from configs import fashion_mnist

  config = fashion_mnist.get_config()
  if case == "demo":
    return config
  if case != "tiny":
    raise ValueError(f"Invalid case {case!r}; choose 'demo' or 'tiny'.")
  config.global_batch_size = 128
  config.data.num_global_crops = 2
  config.data.num_local_crops = 4
  config.data.global_crop_size = 32
  config.data.local_crop_size = 16
  config.model.variant = "tiny"
  config.model.patch_size = 4
  config.model.head_hidden_dim = 4096
  config.model.head_output_dim = 4096
  config.model.head_layers = 3
  config.model.dtype = "float32"
  config.objective.top_k = 64
  config.teacher.use_ema = True
  return config


def _flops(compiled) -> float:
  """Returns XLA's FLOP count of a compiled program (summed over devices' programs if a list)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    return float(sum(a.get("flops", 0.0) for a in analysis))
  return float(analysis.get("flops", 0.0))


def _cpu_seconds() -> float:
  """Returns the user + system CPU time of this process so far, in seconds."""
  import resource

  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _time_calls(function, args, repeats: int, warmup: int) -> float:
  """Returns the median wall time in seconds of `function(*args)` after `warmup` calls."""
  import statistics
  import time

  import jax

  for _ in range(warmup):
    jax.block_until_ready(function(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _measure_matmul(args: argparse.Namespace) -> dict:
  """Times a float32 [n, n] x [n, n] matmul; returns its FLOP/s."""
  import jax
  import jax.numpy as jnp

  n = args.matmul_size
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  seconds = _time_calls(dot, (a, b), repeats=args.repeats, warmup=2)
  return {"size": n, "seconds": seconds, "flops_per_second": 2.0 * n**3 / seconds,
          "load": os.getloadavg()[0]}


def _synthetic_batch(config, mesh):
  """Returns a global batch of standard-normal crops with the shapes the data config gives."""
  import jax
  import numpy as np

  from bam_jax import parallel
  from bam_jax.train import trainer

  rng = np.random.default_rng(0)
  shapes = trainer.batch_shapes(config.data, config.global_batch_size)
  local_batch = config.global_batch_size // jax.process_count()
  host_batch = {name: rng.standard_normal((local_batch, *shape.shape[1:])).astype(np.float32)
                for name, shape in shapes.items()}
  return parallel.host_batch_to_global(host_batch, mesh), shapes


def _build(config):
  """Builds mesh, network, optimizer, sharded state, loss and the sharded train step."""
  import jax

  from bam_jax import objective
  from bam_jax import parallel
  from bam_jax.train import optimizer as optimizer_lib
  from bam_jax.train import schedules
  from bam_jax.train import state as state_lib
  from bam_jax.train import step as step_lib

  mesh = parallel.create_mesh()
  parallel.check_global_batch_size(config.global_batch_size, mesh)
  durations = schedules.resolve_durations(config, config.get("num_train_examples"))
  network = state_lib.build_network(config.model)
  optimizer = optimizer_lib.make_optimizer(
      config.optim, global_batch_size=config.global_batch_size, durations=durations,
      freeze_patch_embedding=config.model.freeze_patch_embedding)
  batch, shapes = _synthetic_batch(config, mesh)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  state, sharding = state_lib.create_sharded_train_state(
      init_rng, network, optimizer, shapes, mesh, use_ema_teacher=config.teacher.use_ema)
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
      state_sharding=sharding)
  return network, state, batch, dropout_rng, loss_fn, train_step


def _measure_step(args: argparse.Namespace) -> dict:
  """Compiles and times the train step of one case; returns its measurements."""
  import resource
  import statistics
  import time

  import jax

  config = _config(args.case)
  network, state, batch, dropout_rng, _, train_step = _build(config)

  compile_start = time.perf_counter()
  compiled = train_step.lower(state, batch, dropout_rng).compile()
  compile_seconds = time.perf_counter() - compile_start
  memory = compiled.memory_analysis()
  xla_peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
              + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  flops = _flops(compiled)

  # The state is donated, so each call must receive the state the previous call returned.
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch, dropout_rng)
  jax.block_until_ready(metrics)
  times = []
  cpu_start = _cpu_seconds()
  for _ in range(args.repeats):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, dropout_rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  cpu_seconds = (_cpu_seconds() - cpu_start) / args.repeats
  seconds = statistics.median(times)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  return {
      "case": args.case,
      "devices": jax.device_count(),
      "batch": config.global_batch_size,
      "params_million": num_params / 1e6,
      "seconds": seconds,
      "seconds_min": min(times),
      "seconds_max": max(times),
      "cpu_seconds": cpu_seconds,
      "images_per_second": config.global_batch_size / seconds,
      "compile_seconds": compile_seconds,
      "xla_peak_gib": xla_peak / 2**30,
      "process_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      "gflops_per_step": flops / 1e9,
      "loss": float(metrics["loss"]),
      "load": os.getloadavg()[0],
  }


def _measure_breakdown(args: argparse.Namespace) -> list[dict]:
  """Times parts of the step of one case, each jitted on its own on the same sharded inputs."""
  import jax
  import jax.numpy as jnp

  config = _config(args.case)
  network, state, batch, dropout_rng, loss_fn, _ = _build(config)
  params = state.params
  global_crops = batch["global_crops"]
  local_crops = batch.get("local_crops")

  def backbone_features(params, crops):
    # [batch, V, H, W, C] -> [batch * V, width], as BAMNetwork feeds the backbone.
    flat = crops.reshape(crops.shape[0] * crops.shape[1], *crops.shape[2:])
    return network.apply({"params": params}, flat, method="embed")

  def backbone_forward(params, crops):
    return backbone_features(params, crops)

  def backbone_forward_backward(params, crops):
    return jax.grad(lambda p: jnp.sum(backbone_features(p, crops)))(params)

  num_crops = config.data.num_global_crops + config.data.num_local_crops
  width = network.width
  features = jax.random.normal(jax.random.key(0), (num_crops, config.global_batch_size, width))

  def head_apply(params, features):
    return network.apply({"params": params},
                         features, method=lambda module, f: module.head(f))

  def head_forward_backward(params, features):
    return jax.grad(lambda p: jnp.sum(head_apply(p, features)))(params)

  outputs = jax.jit(lambda p: network.apply({"params": p}, global_crops, local_crops))(params)
  student = outputs["projections"]
  teacher = student + 0.01

  def objective_forward_backward(student, teacher):
    return jax.value_and_grad(lambda s: loss_fn(s, teacher)[0])(student)

  def full_forward(params):
    return network.apply({"params": params}, global_crops, local_crops)["projections"]

  parts = [
      ("network forward, all crops (teacher)", full_forward, (params,)),
      ("backbone forward, global crops", backbone_forward, (params, global_crops)),
      ("backbone forward + backward, global crops", backbone_forward_backward,
       (params, global_crops)),
      ("head forward + backward, all crops", head_forward_backward, (params, features)),
      ("objective forward + backward", objective_forward_backward, (student, teacher)),
  ]
  if local_crops is not None:
    parts[2:2] = [
        ("backbone forward, local crops", backbone_forward, (params, local_crops)),
    ]
    parts.insert(4, ("backbone forward + backward, local crops", backbone_forward_backward,
                     (params, local_crops)))
  rows = []
  for name, function, function_args in parts:
    compiled = jax.jit(function).lower(*function_args).compile()
    seconds = _time_calls(compiled, function_args, repeats=args.repeats, warmup=1)
    rows.append({"part": name, "seconds": seconds, "gflops": _flops(compiled) / 1e9,
                 "load": os.getloadavg()[0]})
  return rows


def _run_child(mode: str, args: argparse.Namespace, case: str = "") -> dict | list:
  env = dict(os.environ)
  if args.devices:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={args.devices}").strip()
  command = [sys.executable, os.path.abspath(__file__), f"--child={mode}", f"--case={case}",
             f"--repeats={args.repeats}", f"--warmup={args.warmup}",
             f"--matmul_size={args.matmul_size}"]
  result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=_REPOSITORY)
  if result.returncode != 0:
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return {"case": case, "error": tail[:160]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="demo,tiny", help="comma-separated: demo, tiny")
  parser.add_argument("--repeats", type=int, default=5, help="timed steps per case")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--matmul_size", type=int, default=4096,
                      help="side n of the float32 [n, n] x [n, n] matmul that sets the peak")
  parser.add_argument("--devices", type=int, default=0,
                      help="fake CPU devices to split the batch over (0: the real devices)")
  parser.add_argument("--breakdown", action="store_true",
                      help="also time parts of the step (forward, backward, head, objective)")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--case", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.child == "matmul":
    print(json.dumps(_measure_matmul(args)))
    return
  if args.child == "step":
    print(json.dumps(_measure_step(args)))
    return
  if args.child == "breakdown":
    print(json.dumps(_measure_breakdown(args)))
    return

  peak = _run_child("matmul", args)
  if "error" in peak:
    sys.exit(f"The matmul peak measurement failed: {peak['error']}")
  peak_gflops = peak["flops_per_second"] / 1e9
  print(f"Matmul peak: float32 {peak['size']}^3 in {peak['seconds']:.3f} s = "
        f"{peak_gflops:.1f} GFLOP/s (load average {peak['load']:.2f}).")
  print()
  print("| case | devices | batch | params (M) | step (s), median [min, max] | CPU s per step "
        "| images/s | compile (s) | XLA peak per device (GiB) | process peak (GiB) | GFLOP per step "
        "| GFLOP/s | of matmul peak | load |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for case in args.cases.split(","):
    row = _run_child("step", args, case)
    if "error" in row:
      print(f"| {case} | failed: {row['error']} | | | | | | | | | | | | |", flush=True)
      continue
    achieved = row["gflops_per_step"] / row["seconds"]
    print(f"| {case} | {row['devices']} | {row['batch']} | {row['params_million']:.2f} "
          f"| {row['seconds']:.3f} [{row['seconds_min']:.3f}, {row['seconds_max']:.3f}] "
          f"| {row['cpu_seconds']:.2f} | {row['images_per_second']:.1f} | {row['compile_seconds']:.1f} "
          f"| {row['xla_peak_gib']:.2f} | {row['process_peak_gib']:.2f} "
          f"| {row['gflops_per_step']:.1f} | {achieved:.1f} | {achieved / peak_gflops:.0%} "
          f"| {row['load']:.2f} |", flush=True)

  if not args.breakdown:
    return
  for case in args.cases.split(","):
    rows = _run_child("breakdown", args, case)
    print()
    print(f"Parts of the {case} step, each jitted alone (median of {args.repeats}):")
    print("| part | time (s) | GFLOP | GFLOP/s | of matmul peak | load |")
    print("|---|---|---|---|---|---|")
    if isinstance(rows, dict):
      print(f"| failed: {rows['error']} | | | | | |")
      continue
    for row in rows:
      achieved = row["gflops"] / row["seconds"]
      print(f"| {row['part']} | {row['seconds']:.3f} | {row['gflops']:.1f} | {achieved:.1f} "
            f"| {achieved / peak_gflops:.0%} | {row['load']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
